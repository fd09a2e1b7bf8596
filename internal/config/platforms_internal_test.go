package config

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
)

// fileErrorText is tested directly: a test running as root cannot make a
// file it may not read.
func TestFileErrorText(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give error
		want string
	}{
		{"missing", &fs.PathError{Op: "open", Path: "/nope.yaml", Err: syscall.ENOENT}, "no such file"},
		{"permission", &fs.PathError{Op: "open", Path: "/etc/shadow", Err: syscall.EACCES}, "permission denied"},
		{"directory", &fs.PathError{Op: "read", Path: "/etc", Err: syscall.EISDIR}, "is a directory, not a file"},
		{"other os error", &fs.PathError{Op: "read", Path: "/x", Err: syscall.EIO}, syscall.EIO.Error()},
		{"not a path error", fmt.Errorf("wrapped: %w", errors.New("odd")), "wrapped: odd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := fileErrorText(tt.give)
			assert.Equal(t, tt.want, got)
			assert.NotContains(t, got, "open ")
		})
	}
}

package worker_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/tasks"
)

func TestSmoke(t *testing.T) {
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			b := setup(t, be.Open, setupOpts{})
			rec := b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"a.com"}})
			require.Equal(t, tasks.StatusSucceeded, rec.Status, "%+v", rec)
		})
	}
}

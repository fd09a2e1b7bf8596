package tasks_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/tasks"
)

func TestNormalizeDomain(t *testing.T) {
	t.Parallel()
	long63 := strings.Repeat("a", 63)
	tests := []struct {
		give    string
		want    string
		wantErr string
	}{
		{give: "www.qq.com", want: "www.qq.com"},
		{give: "WWW.QQ.COM", want: "www.qq.com"},
		{give: "wx.qq.com.", want: "wx.qq.com"},
		{give: "a-b.example.com", want: "a-b.example.com"},
		{give: "xn--fiqs8s.cn", want: "xn--fiqs8s.cn"},
		{give: "中国.cn", want: "xn--fiqs8s.cn"},
		{give: "Bücher.example", want: "xn--bcher-kva.example"},
		{give: long63 + ".com", want: long63 + ".com"},
		{give: "", wantErr: "is empty"},
		{give: "https://www.qq.com", wantErr: "has a scheme (https://)"},
		{give: "www.qq.com/path", wantErr: "has a path"},
		{give: "www.qq.com?x=1", wantErr: "has a query"},
		{give: "www.qq.com#top", wantErr: "has a query or fragment"},
		{give: "user@www.qq.com", wantErr: "has user information"},
		{give: "www.qq.com:8080", wantErr: "has a port"},
		{give: "1.2.3.4", wantErr: "is an IP address"},
		{give: "1.2.3.4:80", wantErr: "is an IP address"},
		{give: "[::1]", wantErr: "is an IP address"},
		{give: "::1", wantErr: "is an IP address"},
		{give: "*.qq.com", wantErr: "wildcards are not allowed"},
		{give: "www.qq.com ", wantErr: "whitespace or control"},
		{give: "www\tqq.com", wantErr: "whitespace or control"},
		{give: "www.q\x00q.com", wantErr: "whitespace or control"},
		{give: "www_qq.com", wantErr: "contains '_'"},
		{give: "-www.qq.com", wantErr: "starting or ending with '-'"},
		{give: "www-.qq.com", wantErr: "starting or ending with '-'"},
		{give: "www..qq.com", wantErr: "empty label"},
		{give: ".qq.com", wantErr: "empty label"},
		{give: "localhost", wantErr: "single label"},
		{give: strings.Repeat("a", 64) + ".com", wantErr: "label of 64 characters"},
		{give: strings.Repeat("abcdefghi.", 26) + "com", wantErr: "the limit is 253"},
		{give: "host.123", wantErr: "numeric label"},
		{give: "xn--zz.com", wantErr: "internationalised"},
		{give: "ex\u00e4mple.c\u200bom", wantErr: "whitespace or control"},
		{give: "a\u0301\u05d0.com", wantErr: "not a valid internationalised domain name"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.give), func(t *testing.T) {
			got, err := tasks.NormalizeDomain(tt.give)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestValidateChange(t *testing.T) {
	t.Parallel()
	known := func(a string) bool { return a == "wx1234567890abcdef" }
	many := make([]string, 201)
	for i := range many {
		many[i] = fmt.Sprintf("d%d.example.com", i)
	}
	tests := []struct {
		name        string
		give        tasks.JumpDomainChange
		maxDomains  int
		wantDomains []string
		wantCodes   []string
		wantText    string
	}{
		{
			name:        "add normalises and removes duplicates",
			give:        tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: "add", Domains: []string{"A.com", "a.com", "b.com."}},
			wantDomains: []string{"a.com", "b.com"},
		},
		{
			name: "get without domains",
			give: tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: "get"},
		},
		{
			name:      "get with domains",
			give:      tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: "get", Domains: []string{"a.com"}},
			wantCodes: []string{tasks.CodeUnexpectedField},
		},
		{
			name:      "set without domains",
			give:      tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: "set"},
			wantCodes: []string{tasks.CodeMissingDomains},
			wantText:  "are required for set",
		},
		{
			name:      "unknown action",
			give:      tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: "replace", Domains: []string{"a.com"}},
			wantCodes: []string{tasks.CodeInvalidAction},
		},
		{
			name:      "unknown platform",
			give:      tasks.JumpDomainChange{Platform: "wx0000000000000000", Action: "add", Domains: []string{"a.com"}},
			wantCodes: []string{tasks.CodeUnknownPlatform},
			wantText:  "not in the platforms file",
		},
		{
			name:      "missing platform",
			give:      tasks.JumpDomainChange{Action: "add", Domains: []string{"a.com"}},
			wantCodes: []string{tasks.CodeInvalidPlatform},
		},
		{
			name:      "every bad domain is named",
			give:      tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: "add", Domains: []string{"ok.com", "http://a.com", "b.com:80"}},
			wantCodes: []string{tasks.CodeInvalidDomain, tasks.CodeInvalidDomain},
			wantText:  `domains[1] "http://a.com": has a scheme`,
		},
		{
			name:      "201 domains exceed the default limit",
			give:      tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: "set", Domains: many},
			wantCodes: []string{tasks.CodeTooManyDomains},
			wantText:  "has 201 distinct domains; the limit is 200",
		},
		{
			name:        "the limit is configurable",
			give:        tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: "set", Domains: many},
			maxDomains:  300,
			wantDomains: many,
		},
		{
			name:        "duplicates do not count toward the limit",
			give:        tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: "add", Domains: []string{"a.com", "A.COM", "a.com."}},
			maxDomains:  1,
			wantDomains: []string{"a.com"},
		},
		{
			name:      "several problems at once, platform first",
			give:      tasks.JumpDomainChange{Platform: "nope nope", Action: "x", Domains: []string{"1.1.1.1"}},
			wantCodes: []string{tasks.CodeInvalidPlatform, tasks.CodeInvalidAction, tasks.CodeInvalidDomain},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.give
			c.Domains = append([]string(nil), tt.give.Domains...)
			err := c.ValidateWith(tasks.Rules{MaxDomains: tt.maxDomains, KnownPlatform: known})
			if len(tt.wantCodes) == 0 {
				require.NoError(t, err)
				assert.Equal(t, tt.wantDomains, c.Domains)
				return
			}
			var ve *tasks.ValidationError
			require.ErrorAs(t, err, &ve)
			var codes []string
			for _, p := range ve.Problems {
				codes = append(codes, p.Code)
			}
			assert.Equal(t, tt.wantCodes, codes)
			assert.Equal(t, tt.wantCodes[0], ve.Code())
			assert.Contains(t, err.Error(), tt.wantText)
			assert.Equal(t, tt.give.Domains, c.Domains, "a refused change is left as it was")
		})
	}
}

func TestTaskTypeIsPermanent(t *testing.T) {
	t.Parallel()
	// Queued tasks carry this string; changing it strands them.
	assert.Equal(t, "wxdomain:jump_domain", tasks.TypeJumpDomain)
	task, err := tasks.NewJumpDomainTask(tasks.JumpDomainChange{Platform: "wx1", Action: "add", Domains: []string{"a.com"}, Publish: true, RolloutID: "r1"})
	require.NoError(t, err)
	assert.JSONEq(t, `{"platform":"wx1","action":"add","domains":["a.com"],"publish":true,"rollout_id":"r1"}`, string(task.Payload()))
	got, err := tasks.ParseJumpDomainChange(task.Payload())
	require.NoError(t, err)
	assert.Equal(t, []string{"a.com"}, got.Domains)
}

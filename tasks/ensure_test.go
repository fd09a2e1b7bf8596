package tasks_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/tasks"
)

func many(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("d%d.example.com", i)
	}
	return out
}

func TestPlanEnsure(t *testing.T) {
	t.Parallel()
	const app = "wx00000000000000a1"
	change := func(a tasks.Action, publish bool, domains ...string) tasks.JumpDomainChange {
		return tasks.JumpDomainChange{Platform: app, Action: a, Domains: domains, Publish: publish, Ensure: true}
	}
	call := func(a tasks.Action, publish bool, domains ...string) tasks.JumpDomainChange {
		return tasks.JumpDomainChange{Platform: app, Action: a, Domains: domains, Publish: publish}
	}
	tests := []struct {
		name               string
		give               tasks.JumpDomainChange
		testing, published []string
		max                int
		want               tasks.JumpDomainChange
		wantNote           string
		wantErr            *tasks.PlanError
	}{
		{
			name: "add: only what is missing", give: change(tasks.ActionAdd, false, "shop.example.com", "new.example.com"),
			testing: []string{"shop.example.com"},
			want:    call(tasks.ActionAdd, false, "new.example.com"),
		},
		{
			name: "add: all there", give: change(tasks.ActionAdd, false, "shop.example.com"),
			testing: []string{"a.example.com", "shop.example.com"}, wantNote: tasks.EnsureDone,
		},
		{
			name: "add: the published list counts only when publishing", give: change(tasks.ActionAdd, false, "shop.example.com"),
			testing: []string{"shop.example.com"}, published: []string{}, wantNote: tasks.EnsureDone,
		},
		{
			name: "add with publish: missing from published", give: change(tasks.ActionAdd, true, "shop.example.com", "new.example.com"),
			testing: []string{"shop.example.com", "new.example.com"}, published: []string{"new.example.com"},
			want: call(tasks.ActionAdd, true, "shop.example.com"),
		},
		{
			name: "add with publish: published left out (never released)", give: change(tasks.ActionAdd, true, "shop.example.com"),
			testing: []string{"shop.example.com"}, published: nil,
			want: call(tasks.ActionAdd, true, "shop.example.com"),
		},
		{
			name: "add: over the default limit", give: change(tasks.ActionAdd, false, "a.example.com", "b.example.com", "c.example.com"),
			testing: many(198),
			wantErr: &tasks.PlanError{Reason: "adding 3 domains would make 201, over the limit of 200", Adding: 3, Would: 201, Limit: 200},
		},
		{
			name: "add: up to the limit", give: change(tasks.ActionAdd, false, "a.example.com", "b.example.com"),
			testing: many(198), want: call(tasks.ActionAdd, false, "a.example.com", "b.example.com"),
		},
		{
			name: "add: a configured limit, published over it", give: change(tasks.ActionAdd, true, "a.example.com", "b.example.com", "d0.example.com"),
			testing: many(3), published: many(10), max: 10,
			wantErr: &tasks.PlanError{Reason: "adding 2 domains would make 12, over the limit of 10", Adding: 2, Would: 12, Limit: 10},
		},
		{
			name: "delete: only what is there", give: change(tasks.ActionDelete, false, "old.example.com", "gone.example.com"),
			testing: []string{"old.example.com", "keep.example.com"},
			want:    call(tasks.ActionDelete, false, "old.example.com"),
		},
		{
			name: "delete with publish: there in either list", give: change(tasks.ActionDelete, true, "old.example.com"),
			testing: []string{}, published: []string{"old.example.com"},
			want: call(tasks.ActionDelete, true, "old.example.com"),
		},
		{
			name: "delete: nothing there", give: change(tasks.ActionDelete, false, "gone.example.com"),
			testing: []string{"keep.example.com"}, wantNote: tasks.EnsureDone,
		},
		{
			name: "set: the same list, in another order", give: change(tasks.ActionSet, false, "a.example.com", "b.example.com"),
			testing: []string{"b.example.com", "a.example.com"}, wantNote: tasks.EnsureDone,
		},
		{
			name: "set: one more there", give: change(tasks.ActionSet, false, "a.example.com"),
			testing: []string{"a.example.com", "b.example.com"},
			want:    call(tasks.ActionSet, false, "a.example.com"),
		},
		{
			name: "set with publish: published differs", give: change(tasks.ActionSet, true, "a.example.com"),
			testing: []string{"a.example.com"}, published: []string{},
			want: call(tasks.ActionSet, true, "a.example.com"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, note, err := tasks.PlanEnsure(tt.give, tt.testing, tt.published, tt.max)
			switch {
			case tt.wantErr != nil:
				var pe *tasks.PlanError
				require.ErrorAs(t, err, &pe)
				assert.Equal(t, tt.wantErr, pe)
				assert.Empty(t, note)
			case tt.wantNote != "":
				require.NoError(t, err)
				assert.Equal(t, tt.wantNote, note)
			default:
				require.NoError(t, err)
				assert.Empty(t, note)
				assert.Equal(t, tt.want, got)
				assert.False(t, got.Ensure, "the call is a plain change")
			}
		})
	}
}

func TestCanceledBefore(t *testing.T) {
	t.Parallel()
	code := func(c int) *int { return &c }
	tests := []struct {
		name string
		give tasks.Record
		want string
	}{
		{name: "no attempt", give: tasks.Record{}, want: "canceled before it ran"},
		{
			name: "after a busy attempt",
			give: tasks.Record{Attempts: 1, ErrCode: code(-1), ErrMsg: "system error", Error: "WeChat is busy (errcode -1: system error)"},
			want: "canceled before attempt 2; attempt 1 called WeChat and got errcode -1 (system busy), which changed nothing",
		},
		{
			name: "after a refusal",
			give: tasks.Record{Attempts: 2, ErrCode: code(9410016), ErrMsg: "invalid domain", Error: "WeChat refused invalid domain(s) (errcode 9410016: invalid domain)"},
			want: "canceled before attempt 3; attempt 2 called WeChat and got errcode 9410016 (invalid domain), a refusal, which changed nothing",
		},
		{
			name: "after an attempt without an answer (an earlier one's errcode left)",
			give: tasks.Record{Attempts: 2, ErrCode: code(-1), Error: "could not reach WeChat: read tcp: connection reset by peer"},
			want: "canceled before attempt 3; attempt 2 ended without an answer from WeChat (could not reach WeChat: read tcp: connection reset by peer), so the change may or may not have taken effect (check with a get)",
		},
		{
			name: "after an interrupted attempt",
			give: tasks.Record{Attempts: 1, Error: "interrupted (context deadline exceeded); it will run again"},
			want: "canceled before attempt 2; attempt 1 ended without an answer from WeChat (interrupted (context deadline exceeded)), so the change may or may not have taken effect (check with a get)",
		},
		{
			name: "outcome not recorded",
			give: tasks.Record{Attempts: 1},
			want: "canceled before attempt 2; attempt 1's outcome was not recorded, so the change may or may not have taken effect (check with a get)",
		},
		{
			name: "while waiting",
			give: tasks.Record{Attempts: 1, ErrCode: code(-1), Error: "waiting, platform paused: the per-minute frequency limit was hit (errcode 45011: api minute-quota reach limit)"},
			want: "canceled before attempt 2, while it waited (platform paused: the per-minute frequency limit was hit (errcode 45011: api minute-quota reach limit))",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, tasks.CanceledBefore(&tt.give))
		})
	}
}

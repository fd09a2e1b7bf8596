package tasks_test

import (
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"

	"github.com/wxdomain/wxdomain/tasks"
)

func TestIDForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give        string
		wantAppID   bool
		wantTaskID  bool
		wantRollout bool
	}{
		{give: "wx1234567890abcdef", wantAppID: true},
		{give: "wx1234567890ABCDEF"},
		{give: "wx1234567890abcde"},
		{give: "wx1234567890abcdef0"},
		{give: "_global"},
		{give: "wx1234567890abcde:"},
		{give: "0123456789abcdef", wantRollout: true},
		{give: "0123456789abcdef:state"},
		{give: "0123456789abcdef0123456789abcdef", wantTaskID: true},
		{give: "0123456789abcdef0123456789abcdeF"},
		{give: "3b241101-e2bb-4255-8caf-4136c566a962", wantTaskID: true},
		{give: "3b241101-e2bb-4255-8caf-4136c566a96:"},
		{give: "r_0123456789abcdef_0_wx1234567890abcdef", wantTaskID: true},
		{give: "r_0123456789abcdef_12_wx1234567890abcdef", wantTaskID: true},
		{give: "r_0123456789abcdef_012_wx1234567890abcdef"},
		{give: "r_0123456789abcdef__wx1234567890abcdef"},
		{give: "r_0123456789abcdef_1_wx1234567890abcdef:x"},
		{give: "r_0123456789abcdef:state_1_wx1234567890abcdef"},
		{give: ""},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.wantAppID, tasks.ValidAppID(tt.give), "appid %q", tt.give)
		assert.Equal(t, tt.wantTaskID, tasks.ValidTaskID(tt.give), "task id %q", tt.give)
		assert.Equal(t, tt.wantRollout, tasks.ValidRolloutID(tt.give), "rollout id %q", tt.give)
	}
	id := tasks.RolloutTaskID("0123456789abcdef", 7, "wx1234567890abcdef")
	r, a, app, ok := tasks.ParseRolloutTaskID(id)
	assert.True(t, ok)
	assert.Equal(t, []any{"0123456789abcdef", 7, "wx1234567890abcdef"}, []any{r, a, app})
}

func TestTruncateKeepsCharactersWhole(t *testing.T) {
	t.Parallel()
	s := strings.Repeat("é", 100)
	got := tasks.Truncate(s)
	assert.True(t, utf8.ValidString(got))
	assert.LessOrEqual(t, len(got), 64+len("…"))
	assert.Equal(t, "short", tasks.Truncate("short"))
}

func TestProblemsAreBounded(t *testing.T) {
	t.Parallel()
	domains := make([]string, 150)
	for i := range domains {
		domains[i] = "https://" + strings.Repeat("x", 10_000) + strconv.Itoa(i)
	}
	c := tasks.JumpDomainChange{Platform: "bad platform", Action: tasks.ActionSet, Domains: domains}
	err := c.Validate()
	var ve *tasks.ValidationError
	assert.ErrorAs(t, err, &ve)
	assert.Len(t, ve.Problems, tasks.MaxProblems)
	assert.Equal(t, 151-tasks.MaxProblems, ve.More)
	assert.Equal(t, tasks.CodeInvalidPlatform, ve.Code(), "the most specific problem is kept and first")
	assert.Less(t, len(err.Error()), 8<<10)
	assert.Contains(t, err.Error(), "and 131 more")

	many := make([]string, 100_000)
	for i := range many {
		many[i] = "d" + strconv.Itoa(i) + ".com"
	}
	c = tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: tasks.ActionSet, Domains: many}
	err = c.Validate()
	assert.ErrorAs(t, err, &ve)
	assert.Equal(t, tasks.CodeTooManyDomains, ve.Code())
	assert.Len(t, ve.Problems, 1, "one problem for a list over the limit")

	// Spellings of one domain count once, as after normalising.
	c = tasks.JumpDomainChange{Platform: "wx1234567890abcdef", Action: tasks.ActionSet, Domains: append(many[:199:199], "xn--bcher-kva.de", "bücher.de", "BÜCHER.de.")}
	assert.NoError(t, c.Validate())
	assert.Len(t, c.Domains, 200)
}

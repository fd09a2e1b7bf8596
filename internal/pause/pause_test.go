package pause

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
)

// TestPausesWrittenBeforeKindsKeepWorking: a pause stored by an earlier
// version ("until|errcode|reason") gets the kind its errcode implies, and
// a ticket ends only the kinds a ticket cures.
func TestPausesWrittenBeforeKindsKeepWorking(t *testing.T) {
	t.Parallel()
	until := time.Now().Add(time.Hour).UnixMilli()
	tests := []struct {
		give       string
		want       Kind
		wantTicket bool
	}{
		{give: "0|no ticket", want: KindNoTicket, wantTicket: true},
		{give: "61006|bad ticket", want: KindTicketRefused, wantTicket: true},
		{give: "61004|ip", want: KindIPNotWhitelisted},
		{give: "45009|quota", want: KindDailyQuota},
		{give: "45011|minute", want: KindMinuteLimit},
		{give: "40125|secret", want: KindTokenRefused},
		{give: "61004|WeChat said: a|b|c", want: KindIPNotWhitelisted},
	}
	for _, tt := range tests {
		rb := redistest.Mini(t)
		s := NewStore(rb.Client, rb.Prefix)
		ctx := context.Background()
		require.NoError(t, rb.Client.Set(ctx, rb.Prefix+"pause:wx1234567890abcdef", strconv.FormatInt(until, 10)+"|"+tt.give, time.Hour).Err())
		p, ok, err := s.Get(ctx, "wx1234567890abcdef")
		require.NoError(t, err)
		require.True(t, ok, tt.give)
		assert.Equal(t, tt.want, p.Kind, tt.give)
		r, err := s.ResumeForTicket(ctx, nil, "wx1234567890abcdef")
		require.NoError(t, err)
		assert.Equal(t, tt.wantTicket, r.Ended != nil, tt.give)
		assert.Equal(t, !tt.wantTicket, r.Kept != nil, tt.give)
	}
}

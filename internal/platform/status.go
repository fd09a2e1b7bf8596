// Package platform reports what an operator needs to know about each
// configured platform: its shared token, its ticket and any pause.
package platform

import (
	"context"
	"errors"
	"time"

	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"github.com/wxdomain/wxdomain/internal/token"
)

// List is what GET /v1/platforms answers and `wxdomain platforms --json`
// prints: the platforms' states in the platforms file's order.
type List struct {
	Platforms []Status `json:"platforms"`
}

// Status is one platform's state. It never holds a secret, a ticket or a
// token. The OpenAPI document's PlatformStatus describes its JSON (a test
// holds the two together).
type Status struct {
	// AppID is the component appid, from the platforms file.
	AppID string `json:"appid"`
	// Rate is the platform's rate from the platforms file, in upstream
	// calls per second; 0 means WXDOMAIN_DEFAULT_RATE applies.
	Rate float64 `json:"rate"`
	// Token is the shared component access token's state (never the token).
	Token token.Status `json:"token"`
	// Ticket is the stored component_verify_ticket's state (never the ticket).
	Ticket TicketStatus `json:"ticket"`
	// Pause is set while the platform's changes wait (operator needed, quota).
	Pause *pause.Pause `json:"pause,omitempty"`
}

// TicketStatus says whether a ticket is stored and how old it is; the
// times and age are absent when none is.
type TicketStatus struct {
	Stored bool `json:"stored"`
	// ReceivedAt is when the ticket was stored (pushed or put by an operator).
	ReceivedAt time.Time `json:"received_at,omitzero"`
	// CreatedAt is WeChat's CreateTime of the ticket (or when an operator
	// stored it without one): a push created no later changes nothing.
	CreatedAt time.Time `json:"created_at,omitzero"`
	// AgeSeconds is how long ago it was received, when the report was made.
	AgeSeconds int64 `json:"age_seconds,omitempty"`
}

// Sources are the stores a report reads.
type Sources struct {
	Tokens  *token.Source
	Tickets *ticket.Store
	Pauses  *pause.Store
}

// Configured is a platform from the platforms file.
type Configured struct {
	AppID string
	Rate  float64
}

// Report returns the state of each platform, in the given order.
func Report(ctx context.Context, src Sources, platforms []Configured) ([]Status, error) {
	out := make([]Status, 0, len(platforms))
	now := time.Now()
	for _, p := range platforms {
		st := Status{AppID: p.AppID, Rate: p.Rate}
		var err error
		if st.Token, err = src.Tokens.Status(ctx, p.AppID); err != nil {
			return nil, err
		}
		t, err := src.Tickets.Get(ctx, p.AppID)
		switch {
		case errors.Is(err, ticket.ErrNoTicket):
		case err != nil:
			return nil, err
		default:
			st.Ticket = TicketStatus{Stored: true, ReceivedAt: t.ReceivedAt.UTC(), CreatedAt: t.CreatedAt.UTC(), AgeSeconds: int64(now.Sub(t.ReceivedAt) / time.Second)}
		}
		pz, paused, err := src.Pauses.Get(ctx, p.AppID)
		if err != nil {
			return nil, err
		}
		if paused {
			pz.Until = pz.Until.UTC()
			st.Pause = &pz
		}
		out = append(out, st)
	}
	return out, nil
}

package tasks

import "time"

// Event is one step of a change, for its timeline: every attempt, answer,
// deferral and cancel, with the reason.
type Event struct {
	At      time.Time `json:"at"`
	Status  Status    `json:"status"`
	Attempt int       `json:"attempt"`
	ErrCode *int      `json:"errcode,omitempty"`
	// Detail is the record's error or note at that step.
	Detail string `json:"detail,omitempty"`
	// NextAttemptAt is when a waiting change runs again.
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty"`
}

// MaxEvents bounds a record's timeline: the first event and the latest
// ones are kept.
const MaxEvents = 40

// event is the record's state as a timeline step.
func (r *Record) event(at time.Time) Event {
	detail := r.Error
	if detail == "" {
		detail = r.Note
	}
	return Event{At: at, Status: r.Status, Attempt: r.Attempts, ErrCode: r.ErrCode, Detail: cut(detail, 300), NextAttemptAt: r.NextAttemptAt}
}

// same reports whether two steps say the same (the time aside).
func (e Event) same(o Event) bool {
	code := func(p *int) int {
		if p == nil {
			return -1 << 30
		}
		return *p
	}
	return e.Status == o.Status && e.Attempt == o.Attempt && code(e.ErrCode) == code(o.ErrCode) && e.Detail == o.Detail
}

// addEvent appends a step, keeping the first and the latest MaxEvents-1.
func (r *Record) addEvent(e Event) {
	r.Events = append(r.Events, e)
	if n := len(r.Events); n > MaxEvents {
		r.Events = append(r.Events[:1], r.Events[n-MaxEvents+1:]...)
	}
}

// cut bounds text to n bytes at a rune boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}

package worker

import (
	"context"
	"slices"
	"sync"
)

// places bounds the changes working at once (Config.Concurrency). A place
// that frees goes to a waiting single change before bulk work, so that the
// precedence single changes have at the limiter holds here too.
type places struct {
	mu   sync.Mutex
	free int
	// waiting: single changes, then bulk work, each first come first served.
	waiting [2][]chan struct{}
}

func newPlaces(n int) *places { return &places{free: n} }

// take takes a place, waiting for one if none is free (blocked: true),
// until ctx ends or stop closes.
func (p *places) take(ctx context.Context, stop <-chan struct{}, bulk bool) (blocked bool, err error) {
	p.mu.Lock()
	if p.free > 0 {
		p.free--
		p.mu.Unlock()
		return false, nil
	}
	lane := 0
	if bulk {
		lane = 1
	}
	ch := make(chan struct{})
	p.waiting[lane] = append(p.waiting[lane], ch)
	p.mu.Unlock()
	select {
	case <-ch:
		return true, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-stop:
		err = errStopping
	}
	p.mu.Lock()
	i := slices.Index(p.waiting[lane], ch)
	if i >= 0 {
		p.waiting[lane] = slices.Delete(p.waiting[lane], i, i+1)
	}
	p.mu.Unlock()
	if i < 0 {
		// Handed a place as it gave up: the place goes on.
		p.give()
	}
	return true, err
}

// give frees a place, for the first single change waiting, else the first
// bulk work.
func (p *places) give() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for lane := range p.waiting {
		if len(p.waiting[lane]) > 0 {
			ch := p.waiting[lane][0]
			p.waiting[lane] = p.waiting[lane][1:]
			close(ch)
			return
		}
	}
	p.free++
}

package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/wxdomain/wxdomain/tasks"
)

// ServerConfig configures the asynq server.
type ServerConfig struct {
	// Concurrency is how many changes work at once (set the handler's
	// Config.Concurrency alike).
	Concurrency int
	// Waiting is how many more may wait in the worker for their call slot
	// (at most about a second each).
	Waiting int
	// Queues and their priorities; default {tasks.QueueDefault: 1}.
	Queues map[string]int
	// ShutdownTimeout is how long in-flight tasks may finish on shutdown
	// before they are pushed back to the queue.
	ShutdownTimeout time.Duration
	// PollInterval is how often idle workers and the retry forwarder look
	// for work; asynq's defaults (1s and 5s) when zero.
	PollInterval time.Duration
	// Handlers are more task types this server runs (the rollout fan-out).
	Handlers map[string]asynq.Handler
}

// Run processes tasks until ctx ends, then shuts down gracefully: it stops
// taking tasks, lets running ones finish within the shutdown timeout and
// pushes the rest back to their queue.
func Run(ctx context.Context, rdb redis.UniversalClient, cfg ServerConfig, h *Handler, log *zap.Logger) error {
	srv := NewServer(rdb, cfg, h, log)
	mux := asynq.NewServeMux()
	mux.Handle(tasks.TypeJumpDomain, h)
	for typ, other := range cfg.Handlers {
		mux.Handle(typ, other)
	}
	if err := srv.Start(mux); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	log.Info("worker started", zap.Int("concurrency", cfg.Concurrency), zap.Any("queues", queuesOf(cfg)))
	<-ctx.Done()
	log.Info("worker stopping", zap.Duration("shutdown_timeout", cfg.ShutdownTimeout))
	h.Stop() // changes still waiting go back to the queue now
	srv.Shutdown()
	log.Info("worker stopped")
	return nil
}

func queuesOf(cfg ServerConfig) map[string]int {
	if len(cfg.Queues) == 0 {
		return map[string]int{tasks.QueueDefault: 1}
	}
	return cfg.Queues
}

// NewServer returns the asynq server wired to the handler's retry policy.
func NewServer(rdb redis.UniversalClient, cfg ServerConfig, h *Handler, log *zap.Logger) *asynq.Server {
	level := asynq.ErrorLevel
	if log.Core().Enabled(zapcore.DebugLevel) {
		level = asynq.DebugLevel
	}
	return asynq.NewServerFromRedisClient(rdb, asynq.Config{
		// A task within a second of its call slot sleeps for it (asynq
		// schedules to the whole second), and the sleepers of a throttled
		// platform must not take the places of the others' work: the
		// server takes that many more tasks, and the handler bounds the
		// work itself (Config.Concurrency).
		Concurrency: max(cfg.Concurrency, 1) + max(cfg.Waiting, 0),
		Queues:      queuesOf(cfg),
		// Single changes go before bulk work whenever both wait.
		StrictPriority:           true,
		RetryDelayFunc:           h.RetryDelay,
		IsFailure:                IsFailure,
		ShutdownTimeout:          cfg.ShutdownTimeout,
		TaskCheckInterval:        cfg.PollInterval,
		DelayedTaskCheckInterval: cfg.PollInterval,
		Logger:                   asynqLogger{log.Named("asynq").Sugar()},
		LogLevel:                 level,
		// asynq's own per-task lines would repeat the handler's.
		HealthCheckFunc: func(err error) {
			if err != nil {
				log.Warn("redis health check failed", zap.Error(err))
			}
		},
	})
}

// asynqLogger adapts zap to asynq's Logger. Fatal does not exit: asynq
// calls it only on start-up failures, which Start also returns.
type asynqLogger struct{ s *zap.SugaredLogger }

func (l asynqLogger) Debug(args ...any) { l.s.Debug(args...) }
func (l asynqLogger) Info(args ...any)  { l.s.Info(args...) }
func (l asynqLogger) Warn(args ...any)  { l.s.Warn(args...) }
func (l asynqLogger) Error(args ...any) { l.s.Error(args...) }
func (l asynqLogger) Fatal(args ...any) { l.s.Error(args...) }

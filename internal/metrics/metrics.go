// Package metrics defines wxdomain's Prometheus metrics. Labels never hold
// secrets: platform appids, queue names, errcodes and statuses only.
package metrics

import (
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the counters the worker and token source feed. A nil
// *Metrics records nothing, so components work without it.
type Metrics struct {
	changes      *prometheus.CounterVec
	calls        *prometheus.CounterVec
	callSeconds  *prometheus.HistogramVec
	tokenFetches *prometheus.CounterVec
	limiterWait  prometheus.Histogram
	deferrals    *prometheus.CounterVec
	pauses       *prometheus.CounterVec
	failovers    prometheus.Counter
	unconfirmed  prometheus.Counter
	preflight    *prometheus.CounterVec
}

// New registers the metrics, plus Go and process collectors, on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxdomain_changes_finished_total", Help: "Changes that reached a final status.",
		}, []string{"status"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxdomain_upstream_calls_total", Help: "Calls of modify_wxa_jump_domain by platform and errcode (\"transport\" when no answer was read).",
		}, []string{"platform", "errcode"}),
		callSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wxdomain_upstream_call_seconds", Help: "Latency of upstream calls.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
		}, []string{"api"}),
		tokenFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxdomain_token_fetches_total", Help: "Component token fetches by platform and result.",
		}, []string{"platform", "result"}),
		limiterWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "wxdomain_limiter_wait_seconds", Help: "Time tasks slept in the worker for their call slot.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 10),
		}),
		deferrals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxdomain_deferrals_total", Help: "Changes handed back to the queue without using an attempt, by reason.",
		}, []string{"reason"}),
		pauses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxdomain_platform_pauses_total", Help: "Platform pauses started, by platform and errcode (0: operator needed without errcode).",
		}, []string{"platform", "errcode"}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wxdomain_redis_failovers_total", Help: "Changes of the Redis primary this process writes to (a failover, or a restart).",
		}),
		unconfirmed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wxdomain_redis_unconfirmed_writes_total", Help: "Acknowledgements withheld because Redis replicas did not confirm the write (WXDOMAIN_REDIS_MIN_REPLICAS).",
		}),
		preflight: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxdomain_preflight_checks_total", Help: "Verification-file checks made (cached results not counted), by result: ok, dns, tls, status, redirect, mismatch, timeout, connect, refused_address.",
		}, []string{"result"}),
	}
	reg.MustRegister(m.preflight, m.changes, m.calls, m.callSeconds, m.tokenFetches, m.limiterWait, m.deferrals, m.pauses, m.failovers, m.unconfirmed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// PreflightCheck counts a verification-file check by its result (one of
// preflight.Results: a small fixed set, never the domain).
func (m *Metrics) PreflightCheck(result string) {
	if m != nil {
		m.preflight.WithLabelValues(result).Inc()
	}
}

// RedisFailover counts a change of the Redis primary.
func (m *Metrics) RedisFailover() {
	if m != nil {
		m.failovers.Inc()
	}
}

// RedisUnconfirmedWrite counts a write replicas did not confirm.
func (m *Metrics) RedisUnconfirmedWrite() {
	if m != nil {
		m.unconfirmed.Inc()
	}
}

// ChangeFinished counts a change's final status.
func (m *Metrics) ChangeFinished(status string) {
	if m != nil {
		m.changes.WithLabelValues(status).Inc()
	}
}

// UpstreamCall counts a modify call; errcode < 0 other than -1 is not
// used, so "transport" marks a call without an answer.
func (m *Metrics) UpstreamCall(platform string, errcode int, answered bool, d time.Duration) {
	if m == nil {
		return
	}
	code := "transport"
	if answered {
		code = strconv.Itoa(errcode)
	}
	m.calls.WithLabelValues(platform, code).Inc()
	m.callSeconds.WithLabelValues("modify_wxa_jump_domain").Observe(d.Seconds())
}

// TokenFetch counts a token fetch and its outcome.
func (m *Metrics) TokenFetch(platform string, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.tokenFetches.WithLabelValues(platform, result).Inc()
}

// LimiterWait records a sleep for a call slot.
func (m *Metrics) LimiterWait(d time.Duration) {
	if m != nil {
		m.limiterWait.Observe(d.Seconds())
	}
}

// Deferral counts a change handed back to the queue.
func (m *Metrics) Deferral(reason string) {
	if m != nil {
		m.deferrals.WithLabelValues(reason).Inc()
	}
}

// PauseStarted counts a platform pause.
func (m *Metrics) PauseStarted(platform string, errcode int) {
	if m != nil {
		m.pauses.WithLabelValues(platform, strconv.Itoa(errcode)).Inc()
	}
}

// QueueCollector reports asynq's queues at scrape time: tasks by state and
// the age of the oldest pending task.
type QueueCollector struct {
	inspector *asynq.Inspector
	tasks     *prometheus.Desc
	latency   *prometheus.Desc
	errors    *prometheus.Desc
}

// NewQueueCollector returns a collector over the inspector.
func NewQueueCollector(inspector *asynq.Inspector) *QueueCollector {
	return &QueueCollector{
		inspector: inspector,
		tasks:     prometheus.NewDesc("wxdomain_queue_tasks", "Tasks in each asynq queue by state.", []string{"queue", "state"}, nil),
		latency:   prometheus.NewDesc("wxdomain_queue_latency_seconds", "Age of the oldest pending task in each queue.", []string{"queue"}, nil),
		errors:    prometheus.NewDesc("wxdomain_queue_scrape_errors", "1 when the queues could not be read at this scrape.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.tasks
	ch <- c.latency
	ch <- c.errors
}

// Collect implements prometheus.Collector.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	queues, err := c.inspector.Queues()
	failed := 0.0
	if err != nil {
		failed = 1
	}
	for _, q := range queues {
		info, err := c.inspector.GetQueueInfo(q)
		if err != nil {
			failed = 1
			continue
		}
		for state, n := range map[string]int{
			"pending": info.Pending, "active": info.Active, "scheduled": info.Scheduled,
			"retry": info.Retry, "archived": info.Archived, "completed": info.Completed,
		} {
			ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(n), q, state)
		}
		ch <- prometheus.MustNewConstMetric(c.latency, prometheus.GaugeValue, info.Latency.Seconds(), q)
	}
	ch <- prometheus.MustNewConstMetric(c.errors, prometheus.GaugeValue, failed)
}

package rollout

import (
	"context"
	"encoding/csv"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/wxdomain/wxdomain/tasks"
)

// Failures lists what a retry would run again (the failed, then the
// canceled platforms), then the platforms whose domains failed their
// preflight whatever their status (in warn mode they were called, and
// their domains still need their verification file).
func (s *Service) Failures(ctx context.Context, id string) ([]Outcome, error) {
	var all []Outcome
	for _, st := range []tasks.Status{tasks.StatusFailed, tasks.StatusCanceled} {
		cursor := ""
		for {
			page, next, err := s.Tasks(ctx, id, st, cursor, 1000)
			if err != nil {
				return nil, err
			}
			all = append(all, page...)
			if cursor = next; cursor == "" {
				break
			}
		}
	}
	pre, err := s.PreflightFailures(ctx, id)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(all))
	for _, o := range all {
		seen[o.Platform] = true
	}
	for _, o := range pre {
		if !seen[o.Platform] {
			all = append(all, o)
		}
	}
	return all, nil
}

// PreflightFindings lists the domains that failed their preflight, with
// the reasons, sorted ("" when none did).
func (o Outcome) PreflightFindings() string {
	var out []string
	for d, why := range o.Preflight {
		if why != tasks.PreflightOK {
			out = append(out, d+": "+why)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// ErrCodeText is the errcode, or "-" when WeChat gave none.
func (o Outcome) ErrCodeText() string {
	if o.ErrCode == nil {
		return "-"
	}
	return strconv.Itoa(*o.ErrCode)
}

// FailuresCSVHeader are the failures CSV's columns; new ones go last, so
// that scripts reading the first five by position keep working.
var FailuresCSVHeader = []string{"platform", "errcode", "errmsg", "reason", "task_id", "status", "preflight"}

// WriteFailuresCSV writes outcomes as the failures CSV. Text that came
// from outside (WeChat's errmsg, reasons) and would start a spreadsheet
// formula gets a leading ' so that opening the file runs nothing.
func WriteFailuresCSV(w io.Writer, outcomes []Outcome) error {
	cw := csv.NewWriter(w)
	_ = cw.Write(FailuresCSVHeader)
	for _, o := range outcomes {
		_ = cw.Write([]string{o.Platform, o.ErrCodeText(), csvText(o.ErrMsg), csvText(o.Error), o.TaskID, string(o.Status), csvText(o.PreflightFindings())})
	}
	cw.Flush()
	return cw.Error()
}

func csvText(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

package tasks

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Identifiers that come from outside (HTTP paths, CLI arguments, task
// payloads) become parts of Redis keys. Each is checked against the form
// wxdomain generates, or WeChat issues, before it touches Redis: nothing
// else can name another key (a rollout id ending in ":state", an appid
// "_global").

// ValidAppID reports whether s has the form of a WeChat component appid:
// "wx" followed by 16 lower-case hexadecimal digits.
func ValidAppID(s string) bool {
	return len(s) == 18 && strings.HasPrefix(s, "wx") && isLowerHex(s[2:])
}

// AppIDForm describes ValidAppID's form, for error messages.
const AppIDForm = `"wx" followed by 16 lower-case hex digits, such as wx1234567890abcdef`

// ValidRolloutID reports whether s has the form of a rollout id: 16
// lower-case hexadecimal digits.
func ValidRolloutID(s string) bool { return len(s) == 16 && isLowerHex(s) }

// ValidTaskID reports whether s has the form of a task id: 32 lower-case hex
// digits (what Enqueue generates), a UUID (what a bare asynq producer
// generates), or a rollout change's "r_{rollout}_{attempt}_{appid}".
func ValidTaskID(s string) bool {
	switch {
	case len(s) == 32:
		return isLowerHex(s)
	case len(s) == 36:
		return isUUID(s)
	}
	_, _, _, ok := ParseRolloutTaskID(s)
	return ok
}

// RolloutTaskID is the id of a rollout's change for one platform in one
// attempt; a crash mid-fan-out resumes without queueing a change twice.
func RolloutTaskID(rollout string, attempt int, appid string) string {
	return "r_" + rollout + "_" + strconv.Itoa(attempt) + "_" + appid
}

// ParseRolloutTaskID splits a rollout change's task id; ok is false for
// anything else.
func ParseRolloutTaskID(s string) (rollout string, attempt int, appid string, ok bool) {
	rest, found := strings.CutPrefix(s, "r_")
	if !found || len(rest) < 16+1+1+1+18 {
		return "", 0, "", false
	}
	rollout, rest = rest[:16], rest[16:]
	appid = rest[len(rest)-18:]
	num := rest[:len(rest)-18]
	if !ValidRolloutID(rollout) || !ValidAppID(appid) || len(num) < 3 || num[0] != '_' || num[len(num)-1] != '_' {
		return "", 0, "", false
	}
	num = num[1 : len(num)-1]
	if len(num) > 6 || (len(num) > 1 && num[0] == '0') {
		return "", 0, "", false
	}
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return "", 0, "", false
		}
		attempt = attempt*10 + int(num[i]-'0')
	}
	return rollout, attempt, appid, true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return s != ""
}

func isUUID(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// maxEcho is how much of a value from outside an error message repeats.
const maxEcho = 64

// Truncate shortens a value from outside for an error message: at most 64
// bytes, cut on a character boundary, with "…" when something was cut.
func Truncate(s string) string {
	if len(s) <= maxEcho {
		return s
	}
	cut := maxEcho
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

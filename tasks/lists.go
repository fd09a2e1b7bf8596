package tasks

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// PlatformLists are a platform's jump-domain lists as WeChat last
// reported them, in the answer to a change (any action).
type PlatformLists struct {
	Testing []string `json:"testing_domains"`
	// Published is nil when WeChat left it out (a platform never released).
	Published *[]string `json:"published_domains,omitempty"`
	ReadAt    time.Time `json:"read_at"`
	// TaskID is the change whose answer they are.
	TaskID string `json:"task_id"`
}

// PlatformListsKey holds a platform's last known lists; they expire with
// the record that wrote them (ResultTTL).
func PlatformListsKey(prefix, appid string) string { return prefix + "lists:" + appid }

// PlatformLists reads the last known lists of platforms, in one round
// trip; a platform never read has none.
func (s *Store) PlatformLists(ctx context.Context, appids []string) (map[string]PlatformLists, error) {
	out := make(map[string]PlatformLists, len(appids))
	for start := 0; start < len(appids); start += 1000 {
		chunk := appids[start:min(start+1000, len(appids))]
		keys := make([]string, 0, len(chunk))
		for _, a := range chunk {
			if !ValidAppID(a) {
				return nil, fmt.Errorf("appid %q: want %s", Truncate(a), AppIDForm)
			}
			keys = append(keys, PlatformListsKey(s.prefix, a))
		}
		vals, err := s.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, fmt.Errorf("read platform lists: %w", err)
		}
		for i, v := range vals {
			if str, ok := v.(string); ok {
				var l PlatformLists
				if json.Unmarshal([]byte(str), &l) == nil {
					out[chunk[i]] = l
				}
			}
		}
	}
	return out, nil
}

package config

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// OpenRedis connects to the Redis a URL names:
//
//	redis://[user:password@]host:port/db          plain
//	rediss://[user:password@]host:port/db         TLS
//	redis://host:port/db?master_name=NAME&addr=host2:port   sentinels (go-redis style)
//	redis-sentinel://[:password@]host1:port,host2:port/db?master=NAME   sentinels (asynq style)
//
// The client is not checked here; the caller pings it.
func OpenRedis(rawURL string) (redis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse errors quote the input, which may hold a password.
		return nil, fmt.Errorf("WXDOMAIN_REDIS_URL: not a valid URL")
	}
	switch u.Scheme {
	case "redis", "rediss":
		if u.Query().Get("master_name") != "" {
			o, err := redis.ParseFailoverURL(rawURL)
			if err != nil {
				return nil, fmt.Errorf("WXDOMAIN_REDIS_URL: %v", err)
			}
			return redis.NewFailoverClient(o), nil
		}
		o, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("WXDOMAIN_REDIS_URL: %v", err)
		}
		return redis.NewClient(o), nil
	case "redis-sentinel":
		o := &redis.FailoverOptions{
			MasterName:    u.Query().Get("master"),
			SentinelAddrs: strings.Split(u.Host, ","),
		}
		if o.MasterName == "" {
			return nil, fmt.Errorf("WXDOMAIN_REDIS_URL: a redis-sentinel URL needs ?master=NAME")
		}
		if p, ok := u.User.Password(); ok {
			o.Password, o.SentinelPassword = p, p
		}
		if db := strings.Trim(u.Path, "/"); db != "" {
			n, err := strconv.Atoi(db)
			if err != nil {
				return nil, fmt.Errorf("WXDOMAIN_REDIS_URL: database %q is not a number", db)
			}
			o.DB = n
		}
		return redis.NewFailoverClient(o), nil
	}
	return nil, fmt.Errorf("WXDOMAIN_REDIS_URL: scheme %q: want redis://, rediss:// or redis-sentinel://", u.Scheme)
}

// IsSentinelURL tells whether a Redis URL names Sentinels.
func IsSentinelURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	return u.Scheme == "redis-sentinel" || u.Query().Get("master_name") != ""
}

func checkRedisURL(v string) error {
	c, err := OpenRedis(v)
	if err != nil {
		return fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "WXDOMAIN_REDIS_URL: "))
	}
	return c.Close()
}

// RedactURL hides the passwords of a Redis URL, for logs and messages:
// the user's, and any in the query (a go-redis Sentinel URL's ?password=
// and ?sentinel_password=).
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	q := u.Query()
	changed := false
	for k := range q {
		if strings.Contains(strings.ToLower(k), "password") {
			q.Set(k, "xxxxx")
			changed = true
		}
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

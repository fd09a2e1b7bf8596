package httpapi_test

// Tests of issue 14 (a newcomer's first hour): one answer for an unknown
// platform, 405 with Allow for a wrong method, get rollouts, and the
// OpenAPI document kept to the code.

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/httpapi"
	"github.com/wxdomain/wxdomain/internal/platform"
)

// TestUnknownPlatformIsOneAnswer: a platform named in a body or in a path
// is answered alike, 422 with the same code: unknown_platform when it is
// not in the platforms file, invalid_platform when it is not an appid.
// Nothing reaches Redis.
func TestUnknownPlatformIsOneAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *httpapi.Config) { c.Preflight = stubPreflight{} })
	for _, tt := range []struct{ appid, code string }{
		{"wx0000000000000000", "unknown_platform"},
		{"wx0", "invalid_platform"},
		{"WX1234567890ABCDEF", "invalid_platform"},
	} {
		for _, req := range []struct{ method, path, body, field string }{
			{"POST", "/v1/changes", `{"platform":"` + tt.appid + `","action":"get"}`, "platform"},
			{"POST", "/v1/rollouts", `{"action":"get","platforms":["` + tt.appid + `"]}`, "platforms"},
			{"PUT", "/v1/platforms/" + tt.appid + "/ticket", `{"component_verify_ticket":"t"}`, "appid"},
			{"POST", "/v1/platforms/" + tt.appid + "/resume", "", "appid"},
			{"GET", "/v1/platforms/" + tt.appid + "/confirmfile", "", "appid"},
			{"POST", "/v1/platforms/" + tt.appid + "/preflight", `{"domains":["a.example.com"]}`, "appid"},
		} {
			r := b.do(t, req.method, req.path, req.body)
			assert.Equal(t, http.StatusUnprocessableEntity, r.status, "%s %s: %v", req.method, req.path, r.body)
			assert.Equal(t, tt.code, errCode(r), "%s %s", req.method, req.path)
			e, _ := r.body["error"].(map[string]any)
			assert.Contains(t, e["message"], tt.appid, "%s %s", req.method, req.path)
			details, _ := e["details"].([]any)
			if assert.NotEmpty(t, details, "%s %s", req.method, req.path) {
				first := details[0].(map[string]any)
				assert.Equal(t, tt.code, first["code"])
				assert.Equal(t, req.field, first["field"], "%s %s", req.method, req.path)
				assert.Equal(t, tt.appid, first["value"])
			}
		}
	}
	keys, err := b.redis.Client.Keys(context.Background(), "*").Result()
	require.NoError(t, err)
	assert.Empty(t, keys, "nothing reached Redis")

	// An appid far too long is echoed cut short, in a small answer.
	long := "wx" + strings.Repeat("f", 3000)
	r := b.do(t, "PUT", "/v1/platforms/"+long+"/ticket", `{"component_verify_ticket":"t"}`)
	assert.Equal(t, http.StatusUnprocessableEntity, r.status)
	raw, _ := json.Marshal(r.body)
	assert.Less(t, len(raw), 1024)
}

// TestWrongMethodIs405: a route asked with a method it does not take is
// 405 method_not_allowed, with Allow listing the methods it takes; a path
// no route has stays 404, and neither is told to a caller without a token.
func TestWrongMethodIs405(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *httpapi.Config) { c.Preflight = stubPreflight{} })
	const taskID = "0123456789abcdef0123456789abcdef"
	const rolloutID = "0123456789abcdef"
	for _, tt := range []struct{ method, path, allow string }{
		{"DELETE", "/v1/changes/" + taskID, "GET"},
		{"PUT", "/v1/changes/" + taskID, "GET"},
		{"GET", "/v1/changes", "POST"},
		{"DELETE", "/v1/changes", "POST"},
		{"GET", "/v1/changes/" + taskID + "/cancel", "POST"},
		{"POST", "/v1/platforms", "GET"},
		{"GET", "/v1/platforms/" + app + "/ticket", "PUT"},
		{"POST", "/v1/platforms/" + app + "/ticket", "PUT"},
		{"GET", "/v1/platforms/" + app + "/resume", "POST"},
		{"POST", "/v1/platforms/" + app + "/confirmfile", "GET"},
		{"GET", "/v1/platforms/" + app + "/preflight", "POST"},
		{"DELETE", "/v1/rollouts", "GET, POST"},
		{"PATCH", "/v1/rollouts", "GET, POST"},
		{"DELETE", "/v1/rollouts/" + rolloutID, "GET"},
		{"POST", "/v1/rollouts/" + rolloutID + "/tasks", "GET"},
		{"GET", "/v1/rollouts/" + rolloutID + "/cancel", "POST"},
		{"PUT", "/v1/rollouts/" + rolloutID + "/retry", "POST"},
		{"POST", "/v1/openapi.json", "GET"},
		// The form of an id is the handler's to check: the route is known.
		{"DELETE", "/v1/changes/" + strings.Repeat("x", 5000), "GET"},
	} {
		r := b.do(t, tt.method, tt.path, "")
		assert.Equal(t, http.StatusMethodNotAllowed, r.status, "%s %s: %v", tt.method, tt.path, r.body)
		assert.Equal(t, "method_not_allowed", errCode(r), "%s %s", tt.method, tt.path)
		assert.Equal(t, tt.allow, r.header.Get("Allow"), "%s %s", tt.method, tt.path)
		e, _ := r.body["error"].(map[string]any)
		msg, _ := e["message"].(string)
		assert.Contains(t, msg, tt.allow)
		assert.Less(t, len(msg), 300, "the path is echoed cut short")
	}
	for _, tt := range []struct{ method, path string }{
		{"GET", "/v1/nothing"},
		{"DELETE", "/v1/nothing"},
		{"GET", "/v1/changes/" + taskID + "/retry"},
		{"POST", "/v1/platforms/" + app},
		{"GET", "/v1/"},
	} {
		r := b.do(t, tt.method, tt.path, "")
		assert.Equal(t, http.StatusNotFound, r.status, "%s %s: %v", tt.method, tt.path, r.body)
		assert.Equal(t, "not_found", errCode(r), "%s %s", tt.method, tt.path)
		assert.Empty(t, r.header.Get("Allow"), "%s %s", tt.method, tt.path)
	}
	// Without a token, a wrong method learns nothing of the routes.
	r := b.do(t, "DELETE", "/v1/changes/"+taskID, "", "Authorization", "")
	assert.Equal(t, http.StatusUnauthorized, r.status)
	assert.Empty(t, r.header.Get("Allow"))

	// Routes a server leaves out (no preflight configured) are no route.
	plain := setup(t)
	for _, path := range []string{"/v1/platforms/" + app + "/confirmfile", "/v1/platforms/" + app + "/preflight"} {
		r := plain.do(t, "PUT", path, "")
		assert.Equal(t, http.StatusNotFound, r.status, path)
		assert.Empty(t, r.header.Get("Allow"), path)
	}
}

// TestGetRollout: a rollout of get reads every platform's lists; domains
// are refused for it, and so is ensure.
func TestGetRollout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do(t, http.MethodPost, "/v1/rollouts", `{"action":"get","platforms":"all"}`)
	require.Equal(t, http.StatusAccepted, r.status, r.body)
	assert.Equal(t, "get", r.body["action"])
	assert.Equal(t, []any{}, r.body["domains"])
	assert.EqualValues(t, 1, r.body["total"])
	id := r.body["rollout_id"].(string)
	assert.Equal(t, "/v1/rollouts/"+id, r.header.Get("Location"))

	r = b.do(t, http.MethodGet, "/v1/rollouts/"+id+"/tasks", "")
	require.Equal(t, http.StatusOK, r.status, r.body)
	require.Len(t, r.body["tasks"], 1)
	assert.Equal(t, app, r.body["tasks"].([]any)[0].(map[string]any)["platform"])

	// Each platform's change is a get, without domains.
	r = b.do(t, http.MethodPost, "/v1/rollouts", `{"action":"get","platforms":"all","dry_run":true}`)
	require.Equal(t, http.StatusOK, r.status, r.body)
	plan := r.body["plan"].([]any)
	require.Len(t, plan, 1)
	change := plan[0].(map[string]any)
	assert.Equal(t, "get", change["action"])
	assert.Equal(t, app, change["platform"])
	assert.Empty(t, change["domains"])

	for _, tt := range []struct{ body, code, field string }{
		{`{"action":"get","domains":["a.com"],"platforms":"all"}`, "unexpected_domains", "domains"},
		{`{"action":"get","ensure":true,"platforms":"all"}`, "invalid_action", "ensure"},
	} {
		r := b.do(t, http.MethodPost, "/v1/rollouts", tt.body)
		require.Equal(t, http.StatusUnprocessableEntity, r.status, tt.body)
		assert.Equal(t, tt.code, errCode(r), tt.body)
		e := r.body["error"].(map[string]any)
		assert.Contains(t, e["message"], tt.field, tt.body)
		details := e["details"].([]any)
		require.NotEmpty(t, details)
		assert.Equal(t, tt.field, details[0].(map[string]any)["field"], tt.body)
	}

	// The document says so.
	doc := openAPIDoc(t)
	action := doc.schema(t, "RolloutRequest")["properties"].(map[string]any)["action"].(map[string]any)
	assert.Contains(t, action["enum"], "get")
	assert.Contains(t, action["description"], "get: reads each platform's lists")
}

// TestPlatformsAnswerIsDocumented: GET /v1/platforms answers
// {"platforms": [...]}, and the document's PlatformStatus has every field
// of platform.Status's JSON (and no other), each described, the ones
// always present required, following the nested types.
func TestPlatformsAnswerIsDocumented(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do(t, http.MethodGet, "/v1/platforms", "")
	require.Equal(t, http.StatusOK, r.status)
	assert.Len(t, r.body, 1, "one field: platforms")
	require.Len(t, r.body["platforms"], 1)

	doc := openAPIDoc(t)
	ok200 := doc.Paths["/v1/platforms"]["get"].(map[string]any)["responses"].(map[string]any)["200"].(map[string]any)
	ref := ok200["content"].(map[string]any)["application/json"].(map[string]any)["schema"].(map[string]any)["$ref"]
	assert.Equal(t, "#/components/schemas/PlatformList", ref)
	matchSchema(t, doc, "PlatformList", reflect.TypeFor[platform.List]())
}

// matchSchema checks a component schema against a Go type's JSON fields.
func matchSchema(t *testing.T, doc *openAPI, name string, typ reflect.Type) {
	t.Helper()
	s := doc.schema(t, name)
	assert.NotEmpty(t, s["description"], "%s has a description", name)
	props, _ := s["properties"].(map[string]any)
	var want, required []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" || !f.IsExported() {
			continue
		}
		field, opts, _ := strings.Cut(tag, ",")
		want = append(want, field)
		if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") && f.Type.Kind() != reflect.Pointer {
			required = append(required, field)
		}
		p, ok := props[field].(map[string]any)
		if !assert.True(t, ok, "%s.%s (Go %s.%s) is documented", name, field, typ.Name(), f.Name) {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ref, ok := p["$ref"].(string); ok {
			inner := strings.TrimPrefix(ref, "#/components/schemas/")
			if ft.Kind() == reflect.Struct {
				matchSchema(t, doc, inner, ft)
			}
			if p["description"] == nil {
				assert.NotEmpty(t, doc.schema(t, inner)["description"], "%s.%s", name, field)
			}
			continue
		}
		assert.NotEmpty(t, p["description"], "%s.%s has a description", name, field)
		switch {
		case ft == reflect.TypeFor[time.Time]():
			assert.Equal(t, "string", p["type"], "%s.%s", name, field)
			assert.Equal(t, "date-time", p["format"], "%s.%s", name, field)
		case ft.Kind() == reflect.Slice:
			assert.Equal(t, "array", p["type"], "%s.%s", name, field)
			items, _ := p["items"].(map[string]any)
			if ref, ok := items["$ref"].(string); ok && ft.Elem().Kind() == reflect.Struct {
				matchSchema(t, doc, strings.TrimPrefix(ref, "#/components/schemas/"), ft.Elem())
			}
		case ft.Kind() == reflect.String:
			assert.Equal(t, "string", p["type"], "%s.%s", name, field)
		case ft.Kind() == reflect.Bool:
			assert.Equal(t, "boolean", p["type"], "%s.%s", name, field)
		case ft.Kind() == reflect.Float64 || ft.Kind() == reflect.Float32:
			assert.Equal(t, "number", p["type"], "%s.%s", name, field)
		case ft.Kind() >= reflect.Int && ft.Kind() <= reflect.Uint64:
			assert.Equal(t, "integer", p["type"], "%s.%s", name, field)
		}
	}
	var documented []string
	for k := range props {
		documented = append(documented, k)
	}
	assert.ElementsMatch(t, want, documented, "%s documents the fields of Go %s", name, typ)
	var req []string
	for _, r := range s["required"].([]any) {
		req = append(req, r.(string))
	}
	assert.ElementsMatch(t, required, req, "%s requires the fields Go %s always writes", name, typ)
}

type openAPI struct {
	OpenAPI    string                    `json:"openapi"`
	Info       map[string]any            `json:"info"`
	Servers    []map[string]any          `json:"servers"`
	Security   []map[string]any          `json:"security"`
	Paths      map[string]map[string]any `json:"paths"`
	Components map[string]map[string]any `json:"components"`
	raw        any
}

func openAPIDoc(t *testing.T) *openAPI {
	t.Helper()
	var doc openAPI
	require.NoError(t, json.Unmarshal(httpapi.OpenAPI, &doc))
	require.NoError(t, json.Unmarshal(httpapi.OpenAPI, &doc.raw))
	return &doc
}

func (d *openAPI) schema(t *testing.T, name string) map[string]any {
	t.Helper()
	s, ok := d.Components["schemas"][name].(map[string]any)
	require.True(t, ok, "components.schemas.%s", name)
	return s
}

// resolve follows a local $ref ("#/components/...") in the document.
func (d *openAPI) resolve(ref string) (any, bool) {
	if !strings.HasPrefix(ref, "#/") {
		return nil, false
	}
	var cur any = d.raw
	for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		part = strings.NewReplacer("~1", "/", "~0", "~").Replace(part)
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// TestOpenAPIDocumentIsSound checks, without the network, what redocly's
// recommended rules would refuse and what the API promises: every $ref
// resolves, every component is used, every operation has a unique
// operationId, a summary and a success answer, every path parameter is
// declared, there are servers, every error code the handlers write is in
// the enum, and the platform routes answer 422 (not 404) for an appid.
// The full `redocly lint` needs the npm registry; CI runs it.
func TestOpenAPIDocumentIsSound(t *testing.T) {
	t.Parallel()
	doc := openAPIDoc(t)
	assert.Equal(t, "3.1.0", doc.OpenAPI)
	assert.NotEmpty(t, doc.Info["title"])
	assert.NotEmpty(t, doc.Info["version"])
	require.NotEmpty(t, doc.Servers, "servers")
	for _, s := range doc.Servers {
		assert.Regexp(t, `^https?://`, s["url"])
		assert.NotEmpty(t, s["description"])
	}
	for _, req := range doc.Security {
		for name := range req {
			assert.Contains(t, doc.Components["securitySchemes"], name)
		}
	}

	// Every $ref resolves; note what is used.
	used := map[string]bool{}
	var walk func(at string, v any)
	walk = func(at string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if ref, ok := v["$ref"].(string); ok {
				_, found := doc.resolve(ref)
				assert.True(t, found, "%s: $ref %s resolves", at, ref)
				if !used[ref] {
					used[ref] = true
					if target, ok := doc.resolve(ref); ok {
						walk(ref, target)
					}
				}
			}
			for k, e := range v {
				walk(at+"/"+k, e)
			}
		case []any:
			for _, e := range v {
				walk(at, e)
			}
		}
	}
	walk("#/paths", doc.raw.(map[string]any)["paths"])
	walk("#/security", doc.raw.(map[string]any)["security"])
	for kind, comps := range doc.Components {
		if kind == "securitySchemes" {
			continue
		}
		for name := range comps {
			assert.True(t, used["#/components/"+kind+"/"+name], "components.%s.%s is used", kind, name)
		}
	}

	// Operations.
	ids := map[string]string{}
	param := regexp.MustCompile(`\{([^}]+)\}`)
	for path, item := range doc.Paths {
		inPath := map[string]bool{}
		for _, m := range param.FindAllStringSubmatch(path, -1) {
			inPath[m[1]] = true
		}
		for method, v := range item {
			if !slices.Contains(httpMethods, method) {
				continue
			}
			op := v.(map[string]any)
			where := strings.ToUpper(method) + " " + path
			id, _ := op["operationId"].(string)
			if assert.NotEmpty(t, id, "%s has an operationId", where) {
				assert.Empty(t, ids[id], "%s: operationId %s is also %s's", where, id, ids[id])
				ids[id] = where
			}
			assert.NotEmpty(t, op["summary"], "%s has a summary", where)
			declared := map[string]bool{}
			params, _ := op["parameters"].([]any)
			if common, ok := item["parameters"].([]any); ok {
				params = append(params, common...)
			}
			for _, p := range params {
				pm := p.(map[string]any)
				if ref, ok := pm["$ref"].(string); ok {
					r, _ := doc.resolve(ref)
					pm, _ = r.(map[string]any)
				}
				if pm["in"] == "path" {
					declared[pm["name"].(string)] = true
					assert.Equal(t, true, pm["required"], "%s: path parameter %s is required", where, pm["name"])
				}
			}
			assert.Equal(t, inPath, declared, "%s declares its path parameters", where)
			responses, _ := op["responses"].(map[string]any)
			var codes []string
			for code, r := range responses {
				codes = append(codes, code)
				rm := r.(map[string]any)
				if _, ok := rm["$ref"]; !ok {
					assert.NotEmpty(t, rm["description"], "%s: response %s has a description", where, code)
				}
			}
			sort.Strings(codes)
			assert.True(t, slices.ContainsFunc(codes, func(c string) bool { return strings.HasPrefix(c, "2") }), "%s has a success answer: %v", where, codes)
			if strings.HasPrefix(path, "/v1/platforms/{appid}/") {
				assert.Contains(t, codes, "422", "%s: an appid not in the platforms file is 422", where)
				assert.NotContains(t, codes, "404", "%s: 404 is not an answer for an appid", where)
			}
		}
	}

	// Every code the handlers write is one the document lists.
	enum := doc.schema(t, "Error")["properties"].(map[string]any)["error"].(map[string]any)["properties"].(map[string]any)["code"].(map[string]any)["enum"].([]any)
	written := regexp.MustCompile(`writeError\(w, http\.Status\w+, "([a-z_]+)"`)
	undocumented := []string{"not_ready"} // GET /readyz, for probes, is not in the document
	for _, file := range []string{"httpapi.go", "preflight.go"} {
		src, err := os.ReadFile(file)
		require.NoError(t, err)
		for _, m := range written.FindAllStringSubmatch(string(src), -1) {
			if !slices.Contains(undocumented, m[1]) {
				assert.Contains(t, enum, m[1], "%s writes code %s", file, m[1])
			}
		}
	}
}

// TestOpenAPIServedAsEmbedded: the served document is the embedded one.
func TestOpenAPIServedAsEmbedded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req, err := http.NewRequest(http.MethodGet, b.srv.URL+"/v1/openapi.json", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, httpapi.OpenAPI, raw)
}

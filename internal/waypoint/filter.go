package waypoint

import (
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/kmesh-go/kmesh/internal/model"
)

// modifyHeaders applies a header modifier to h.
func modifyHeaders(h http.Header, m *model.HeaderModifier) {
	for _, kv := range m.Set {
		h.Set(kv.Name, kv.Value)
	}
	for _, kv := range m.Add {
		h.Add(kv.Name, kv.Value)
	}
	for _, name := range m.Remove {
		h.Del(name)
	}
}

// rewritePath applies a path modifier; prefix is what a PathPrefix match
// matched ("" for other matches).
func rewritePath(path string, pm *model.PathModifier, m *match) string {
	switch pm.Type {
	case model.PathReplaceFull:
		return pm.Value
	case model.PathReplacePrefix:
		if m == nil || m.pathKind != model.MatchTypePathPrefix {
			return path
		}
		prefix := strings.TrimSuffix(m.path, "/")
		rest := strings.TrimPrefix(path, prefix)
		repl := strings.TrimSuffix(pm.Value, "/")
		switch {
		case rest == "" && repl == "":
			return "/"
		case rest == "":
			return repl
		case repl == "":
			return rest
		}
		return repl + rest
	}
	return path
}

// redirect answers with the redirect the filter describes.
func redirect(w http.ResponseWriter, r *http.Request, rd *model.RequestRedirect, m *match) int {
	scheme := "http"
	if rd.Scheme != "" {
		scheme = rd.Scheme
	}
	host, port := r.Host, ""
	if h, p, err := net.SplitHostPort(r.Host); err == nil {
		host, port = h, p
	}
	if rd.Hostname != "" {
		host = rd.Hostname
	}
	switch {
	case rd.Port != 0:
		port = strconv.Itoa(int(rd.Port))
	case rd.Scheme != "":
		port = "" // a new scheme implies its well-known port
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	path := r.URL.Path
	if rd.Path != nil {
		path = rewritePath(path, rd.Path, m)
	}
	loc := scheme + "://" + host
	if port != "" {
		loc = scheme + "://" + net.JoinHostPort(host, port)
	}
	loc += path
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	code := rd.StatusCode
	if code == 0 {
		code = http.StatusFound
	}
	w.Header().Set("Location", loc)
	w.WriteHeader(code)
	return code
}

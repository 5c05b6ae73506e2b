package tunnel

import (
	"encoding/json"
	"net/http"
	"path/filepath"

	"github.com/kmesh-go/kmesh/internal/admin"
	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/identity"
)

// SocketFile is the tunnel's read-only API, a Unix socket in the state
// directory (mode 0600, root peers only, as kmeshd's admin socket): kmeshd
// asks it for what only the tunnel knows, so `kmeshctl get connections`
// and `kmeshctl get certs` show the tunnel's view through kmeshd.
const SocketFile = "tunnel.sock"

// SocketPath is the tunnel's socket in the state directory dir.
func SocketPath(dir string) string { return filepath.Join(dir, SocketFile) }

// ServedBy is api.Certs.ServedBy for the tunnel's certificates.
const ServedBy = "kmeshd tunnel"

// Handler serves the tunnel's API:
//
//   - GET /connections: the tunnelled connections open now
//     ([Tunnel.Connections]);
//   - GET /certs: the certificates the tunnel presents, one per identity of
//     its pods, and the roots it accepts; 404 when its certificate source
//     is no cache.
func (t *Tunnel) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /connections", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, t.Connections())
	})
	mux.HandleFunc("GET /certs", func(w http.ResponseWriter, r *http.Request) {
		c, ok := t.cfg.Certs.(*identity.Cache)
		if !ok {
			http.Error(w, "the tunnel's certificates come from no cache it can list", http.StatusNotFound)
			return
		}
		doc := admin.CertsDoc(c)
		doc.ServedBy = ServedBy
		if doc.Certificates == nil {
			doc.Certificates = []api.Cert{}
		}
		writeJSON(w, doc)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

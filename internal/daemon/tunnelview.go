package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/kmesh-go/kmesh/internal/admin"
	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/tunnel"
)

// tunnelView asks the tunnel process, over its socket in the state
// directory, for what only it knows: the connections it carries and the
// certificates it presents. kmeshd holds no tunnelled connection itself
// (so its restarts cut none), and its kernel telemetry leaves them to the
// tunnel.
type tunnelView struct {
	socket string
	client *http.Client
}

func newTunnelView(stateDir string) *tunnelView {
	sock := tunnel.SocketPath(stateDir)
	return &tunnelView{socket: sock, client: &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}}
}

func (v *tunnelView) get(path string, out any) error {
	resp, err := v.client.Get("http://kmeshd-tunnel" + path)
	if err != nil {
		return fmt.Errorf("kmeshd tunnel at %s: %w", v.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("kmeshd tunnel at %s: %s %s", v.socket, path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("kmeshd tunnel at %s: %s: %w", v.socket, path, err)
	}
	return nil
}

// Connections lists the kernel's connections and, with a CA, the
// tunnel's; a tunnel that does not answer is logged and left out.
func (d *daemon) Connections() []api.Connection {
	conns := d.telemetry.Connections()
	if d.tunnelView == nil {
		return conns
	}
	var tc []api.Connection
	if err := d.tunnelView.get("/connections", &tc); err != nil {
		d.log.Warn("tunnelled connections not listed", "err", err)
		return conns
	}
	return append(conns, tc...)
}

// certsDoc is /certs: the certificates the tunnel presents, as it lists
// them; kmeshd's own cache (same CA and identities) only when the tunnel
// does not answer, saying so.
func (d *daemon) certsDoc() api.Certs {
	var doc api.Certs
	err := d.tunnelView.get("/certs", &doc)
	if err == nil {
		return doc
	}
	doc = admin.CertsDoc(d.certs)
	doc.ServedBy, doc.TunnelError = "kmeshd", err.Error()
	return doc
}

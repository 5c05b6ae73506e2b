package tunnel

import (
	"time"

	"github.com/kmesh-go/kmesh/internal/metrics"
	"github.com/kmesh-go/kmesh/internal/model"
)

// report counts a carried connection in Istio's TCP metrics and writes its
// access log line, as ztunnel does for its connections: reporter "source"
// on the client's node (outbound), "destination" on the server's
// (inbound), both principals as the handshake proved them, and
// connection_security_policy mutual_tls. Connections the tunnel refused
// (Err set) are not counted: no byte of theirs was carried.
func (t *Tunnel) report(ev Event) {
	if ev.Err != nil || (t.cfg.Metrics == nil && t.cfg.AccessLog == nil) {
		return
	}
	l := t.labels(ev)
	// Istio's sense: sent is what the destination sent back, received
	// what the source sent; the event counts from the client's side.
	sent, received := uint64(max(ev.Received, 0)), uint64(max(ev.Sent, 0))
	if t.cfg.Metrics != nil {
		c := t.cfg.Metrics.TCP(l)
		if ev.Open {
			c.Opened()
		} else {
			c.Closed(sent, received)
		}
	}
	if t.cfg.AccessLog != nil && !ev.Open {
		t.cfg.AccessLog.Info("connection",
			"start", ev.Start.UTC().Format(time.RFC3339Nano),
			"duration_ms", float64(time.Since(ev.Start))/1e6,
			"reporter", l.Reporter,
			"src_workload", workloadKey(l.SourceWorkloadNamespace, l.SourceWorkload),
			"src_addr", ev.Client.String(),
			"src_principal", l.SourcePrincipal,
			"dst_workload", workloadKey(l.DestinationWorkloadNamespace, l.DestinationWorkload),
			"dst_addr", ev.Target.String(),
			"dst_principal", l.DestinationPrincipal,
			"security", l.ConnectionSecurityPolicy,
			"bytes_sent", sent,
			"bytes_received", received,
		)
	}
}

func (t *Tunnel) labels(ev Event) metrics.TCPLabels {
	l := metrics.TCPLabels{
		Reporter:                 metrics.ReporterSource,
		SourcePrincipal:          ev.Source.String(),
		DestinationPrincipal:     ev.Destination.String(),
		ConnectionSecurityPolicy: metrics.SecurityMutualTLS,
	}
	v := t.view.Load()
	if v == nil {
		return l
	}
	// This node's end is the pod the tunnel serves; the other end is
	// known by its address (the destination's, or the client pod's that
	// the peer's tunnel leaves from).
	local := v.state.Mesh.Workload(ev.Pod)
	var src, dst *model.Workload
	if ev.Direction == Inbound {
		l.Reporter = metrics.ReporterDestination
		src, dst = v.byAddr[ev.Client.Addr()], local
	} else {
		src, dst = local, v.byAddr[ev.Target.Addr()]
	}
	if src != nil {
		l.SourceWorkload, l.SourceWorkloadNamespace = src.Name, src.Namespace
	}
	if dst != nil {
		l.DestinationWorkload, l.DestinationWorkloadNamespace = dst.Name, dst.Namespace
	}
	return l
}

func workloadKey(ns, name string) string {
	if name == "" {
		return ""
	}
	return ns + "/" + name
}

package tunnel

import (
	"net/netip"
	"time"

	"github.com/kmesh-go/kmesh/internal/identity"
)

// Direction says which end of a tunnel an event comes from.
type Direction string

const (
	// Outbound: this node's workload connected; the tunnel carried it out.
	Outbound Direction = "outbound"
	// Inbound: a peer's HBONE stream to this node's workload.
	Inbound Direction = "inbound"
)

// Event is one tunnelled connection, reported when it is carried (Open)
// and again when it ends or fails.
type Event struct {
	Direction Direction
	// Open marks the report of a connection just established; its end
	// comes as another Event with Open false.
	Open bool
	// Start is when the tunnel took the connection.
	Start time.Time
	// Pod is this node's workload the connection belongs to
	// (namespace/name): the client (outbound) or the server (inbound).
	Pod string
	// Source and Destination are the identities proven by the handshake:
	// on the outbound side the server's certificate named Destination, on
	// the inbound side the client's named Source.
	Source, Destination identity.Identity
	// Client is the application's socket (outbound) or the HBONE peer
	// (inbound); Target is the destination workload's address and port;
	// Peer is the HBONE peer: the address dialed (outbound), the client
	// tunnel's address (inbound, as Client).
	Client, Target, Peer netip.AddrPort
	// Sent and Received are the application's bytes from the client's
	// point of view.
	Sent, Received int64
	// Err is why the connection was refused or reset; nil for one that
	// was carried.
	Err error
}

func (t *Tunnel) emit(ev Event) {
	t.report(ev)
	if t.cfg.Events != nil {
		t.cfg.Events(ev)
	}
}

// Package telemetry turns the kernel's connection records into Istio's TCP
// metrics, the access log and the table of live connections. The records
// come from the sockops program (bpf/sockops.c) through the km_events ring
// buffer: one when a connection of an enrolled workload is established, one
// when it closes, with its byte counts.
//
// A connection between two enrolled workloads is seen twice, once by each
// end, as Istio reports it twice: reporter "source" from the client's
// socket, reporter "destination" from the server's.
package telemetry

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/metrics"
	"github.com/kmesh-go/kmesh/internal/model"
)

// Telemetry reads connection records until Close.
type Telemetry struct {
	events    *ebpf.Map
	lost      *ebpf.Map
	metrics   *metrics.Metrics
	accessLog *atomic.Bool
	alog      *slog.Logger // where access log lines go
	log       *slog.Logger
	bootTime  time.Time // wall time of ktime 0, to date records

	index atomic.Pointer[index]

	mu       sync.Mutex
	live     map[uint64]*connection // by socket cookie
	lostSeen uint64

	reader *ringbuf.Reader
	done   chan struct{}
}

// connection is one end of a live connection.
type connection struct {
	event    bpf.KmeshConnEvent
	labels   metrics.TCPLabels
	counters *metrics.TCPCounters
	start    time.Time
}

// Options wire Telemetry to the daemon.
type Options struct {
	Maps      *bpf.KmeshMaps
	Metrics   *metrics.Metrics
	AccessLog *atomic.Bool // the run-time switch of the access log
	// AccessLogger receives one record per closed connection while the
	// switch is on (JSON or text lines, to stdout or a file).
	AccessLogger *slog.Logger
	Log          *slog.Logger
}

// Start begins reading records.
func Start(o Options) (*Telemetry, error) {
	rd, err := ringbuf.NewReader(o.Maps.KmEvents)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmEvents, err)
	}
	t := &Telemetry{
		events:    o.Maps.KmEvents,
		lost:      o.Maps.KmEventsLost,
		metrics:   o.Metrics,
		accessLog: o.AccessLog,
		alog:      o.AccessLogger,
		log:       o.Log,
		bootTime:  bootTime(),
		live:      map[uint64]*connection{},
		reader:    rd,
		done:      make(chan struct{}),
	}
	t.index.Store(newIndex(&model.Mesh{}))
	// Losses before this daemon started were reported by an earlier one.
	t.lostSeen, _ = t.readLost()
	go t.read()
	go t.countLost()
	return t, nil
}

// SetMesh names the workloads and services of the records from now on.
func (t *Telemetry) SetMesh(m *model.Mesh) { t.index.Store(newIndex(m)) }

// SetState names the workloads and services of the records from st, which
// the caller keeps up to date (its lookups lock).
func (t *Telemetry) SetState(st *model.State) { t.index.Store(&index{st: st}) }

// Close stops reading.
func (t *Telemetry) Close() error {
	err := t.reader.Close()
	<-t.done
	t.pollLost()
	return err
}

// pollInterval bounds how late a record is read: the kernel side wakes the
// reader only when records pile up (bpf/sockops.c).
const pollInterval = 100 * time.Millisecond

func (t *Telemetry) read() {
	defer close(t.done)
	var rec ringbuf.Record
	for {
		t.reader.SetDeadline(time.Now().Add(pollInterval))
		err := t.reader.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if errors.Is(err, ringbuf.ErrClosed) {
			return
		}
		if err != nil {
			t.log.Warn("read connection record", "err", err)
			continue
		}
		// The record is the C struct as the kernel wrote it; its Go twin has
		// the same layout (bpf2go, structs.HostLayout), so it is copied as is
		// rather than decoded field by field: this runs once per connection.
		if len(rec.RawSample) < int(unsafe.Sizeof(bpf.KmeshConnEvent{})) {
			t.log.Warn("short connection record", "bytes", len(rec.RawSample))
			continue
		}
		ev := *(*bpf.KmeshConnEvent)(unsafe.Pointer(&rec.RawSample[0]))
		t.handle(&ev)
	}
}

func (t *Telemetry) handle(ev *bpf.KmeshConnEvent) {
	switch bpf.KmeshKmConnEventType(ev.Type) {
	case bpf.KmeshKmConnEventTypeKM_CONN_OPEN:
		c := &connection{event: *ev, labels: t.labels(ev), start: t.bootTime.Add(time.Duration(ev.StartNs))}
		c.counters = t.metrics.TCP(c.labels)
		t.mu.Lock()
		t.live[ev.SocketCookie] = c
		t.mu.Unlock()
		c.counters.Opened()
	case bpf.KmeshKmConnEventTypeKM_CONN_CLOSE:
		t.mu.Lock()
		c := t.live[ev.SocketCookie]
		delete(t.live, ev.SocketCookie)
		t.mu.Unlock()
		var labels metrics.TCPLabels
		var counters *metrics.TCPCounters
		if c != nil {
			labels, counters = c.labels, c.counters // as opened, even if the mesh changed since
		} else {
			labels = t.labels(ev)
			counters = t.metrics.TCP(labels)
		}
		sent, received := istioBytes(ev)
		counters.Closed(sent, received)
		if t.accessLog.Load() {
			t.writeAccessLog(ev, labels)
		}
	}
}

// istioBytes gives a record's bytes as Istio counts them: sent is what the
// destination sent back, received what the source sent, whichever end
// reports.
func istioBytes(ev *bpf.KmeshConnEvent) (sent, received uint64) {
	if bpf.KmeshKmConnDirection(ev.Direction) == bpf.KmeshKmConnDirectionKM_CONN_OUTBOUND {
		return ev.BytesReceived, ev.BytesSent
	}
	return ev.BytesSent, ev.BytesReceived
}

// endpoints returns the source and destination address of the connection
// a record describes, whichever end it came from.
func endpoints(ev *bpf.KmeshConnEvent) (src, dst netip.AddrPort) {
	local := netip.AddrPortFrom(bpf.WordsAddr(ev.LocalAddr), ev.LocalPort)
	remote := netip.AddrPortFrom(bpf.WordsAddr(ev.RemoteAddr), ev.RemotePort)
	if bpf.KmeshKmConnDirection(ev.Direction) == bpf.KmeshKmConnDirectionKM_CONN_OUTBOUND {
		return local, remote
	}
	return remote, local
}

func dialed(ev *bpf.KmeshConnEvent) netip.AddrPort {
	if ev.ServiceAddr == [4]uint32{} {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(bpf.WordsAddr(ev.ServiceAddr), ev.ServicePort)
}

func (t *Telemetry) labels(ev *bpf.KmeshConnEvent) metrics.TCPLabels {
	ix := t.index.Load()
	src, dst := endpoints(ev)
	sw, dw := ix.workload(src.Addr()), ix.workload(dst.Addr())
	l := metrics.TCPLabels{
		Reporter:           metrics.ReporterSource,
		DestinationService: hostname(ix.serviceOf(dialed(ev), dw, dst.Port())),
		// Without mutual TLS (yet), a destination knows it got plain text;
		// a source cannot know what the destination required.
		ConnectionSecurityPolicy: metrics.Unknown,
	}
	if bpf.KmeshKmConnDirection(ev.Direction) == bpf.KmeshKmConnDirectionKM_CONN_INBOUND {
		l.Reporter = metrics.ReporterDestination
		l.ConnectionSecurityPolicy = metrics.SecurityNone
	}
	if sw != nil {
		l.SourceWorkload, l.SourceWorkloadNamespace = sw.Name, sw.Namespace
	}
	if dw != nil {
		l.DestinationWorkload, l.DestinationWorkloadNamespace = dw.Name, dw.Namespace
	}
	return l
}

// Connections lists the live connections, oldest first.
func (t *Telemetry) Connections() []api.Connection {
	ix := t.index.Load()
	t.mu.Lock()
	out := make([]api.Connection, 0, len(t.live))
	for _, c := range t.live {
		src, dst := endpoints(&c.event)
		conn := api.Connection{
			Source:      api.Peer{Address: src.String()},
			Destination: api.Peer{Address: dst.String()},
			Start:       c.start,
			State:       "established",
		}
		if w := ix.workload(src.Addr()); w != nil {
			conn.Source.Workload = w.Key()
		}
		dw := ix.workload(dst.Addr())
		if dw != nil {
			conn.Destination.Workload = dw.Key()
		}
		if s := ix.serviceOf(dialed(&c.event), dw, dst.Port()); s != nil {
			conn.Service = s.Key()
		}
		out = append(out, conn)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

func (t *Telemetry) writeAccessLog(ev *bpf.KmeshConnEvent, l metrics.TCPLabels) {
	src, dst := endpoints(ev)
	sent, received := istioBytes(ev)
	t.alog.Info("connection",
		"start", t.bootTime.Add(time.Duration(ev.StartNs)).UTC().Format(time.RFC3339Nano),
		"duration_ms", float64(ev.EndNs-ev.StartNs)/1e6,
		"reporter", l.Reporter,
		"src_workload", workloadKey(l.SourceWorkloadNamespace, l.SourceWorkload),
		"src_addr", src.String(),
		"dst_workload", workloadKey(l.DestinationWorkloadNamespace, l.DestinationWorkload),
		"dst_addr", dst.String(),
		"dst_service", l.DestinationService,
		"service_addr", addrOrEmpty(dialed(ev)),
		"bytes_sent", sent,
		"bytes_received", received,
		"retransmits", ev.TotalRetrans,
		"srtt_us", ev.SrttUs,
		"end", endReason(ev.OldState),
	)
}

func workloadKey(ns, name string) string {
	if name == "" {
		return ""
	}
	return ns + "/" + name
}

func addrOrEmpty(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// TCP states as the kernel numbers them (BPF_TCP_*).
const (
	tcpEstablished = 1
	tcpSynSent     = 2
	tcpSynRecv     = 3
	tcpCloseWait   = 8
)

// endReason tells an orderly close from an abort: a socket that goes to
// CLOSE straight from a state where both directions were still open was
// reset (received or sent an RST).
func endReason(oldState uint32) string {
	switch oldState {
	case tcpEstablished, tcpSynSent, tcpSynRecv, tcpCloseWait:
		return "reset"
	}
	return "closed"
}

// countLost moves the kernel's count of lost records into the metrics.
func (t *Telemetry) countLost() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-t.done:
			return
		case <-tick.C:
			t.pollLost()
		}
	}
}

func (t *Telemetry) readLost() (uint64, error) {
	var perCPU []uint64
	if err := t.lost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read %s: %w", bpf.KmeshMapKmEventsLost, err)
	}
	var total uint64
	for _, n := range perCPU {
		total += n
	}
	return total, nil
}

func (t *Telemetry) pollLost() {
	total, err := t.readLost()
	if err != nil {
		t.log.Warn("read lost connection records", "err", err)
		return
	}
	t.mu.Lock()
	delta := total - t.lostSeen
	t.lostSeen = total
	t.mu.Unlock()
	if delta > 0 && total >= delta {
		t.metrics.RingbufLost(delta)
		t.log.Warn("connection records lost: ring buffer full", "lost", delta)
	}
}

// bootTime is the wall time at which CLOCK_MONOTONIC, the clock of
// bpf_ktime_get_ns, was zero.
func bootTime() time.Time {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Now().Add(-time.Duration(ts.Nano()))
}

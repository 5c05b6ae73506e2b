// Package telemetry reads Istio's TCP metrics, the live connections and the
// access log out of the kernel (bpf/sockops.c). The counters are kept by the
// kernel, per CPU, in km_tcp_stats, keyed by what decides their labels
// (addresses, the service dialed, the server port, the reporting end);
// Flush, run at every scrape, names them through the mesh and adds what
// changed since the last scrape to the Prometheus counters. No record per
// connection crosses into userspace for the metrics. The live connections
// (/connections) are walked in the kernel's socket storage when asked for,
// through the km_conn_iter iterator in each enrolled network namespace; the
// same walk adds the bytes of long-lived connections to the counters. Only
// while the access log is on does a record per closed connection come
// through the km_events ring buffer.
//
// A connection between two enrolled workloads is seen twice, once by each
// end, as Istio reports it twice: reporter "source" from the client's
// socket, reporter "destination" from the server's.
package telemetry

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/metrics"
	"github.com/kmesh-go/kmesh/internal/model"
)

// Telemetry reads the kernel's counters, connections and records until
// Close.
type Telemetry struct {
	events     *ebpf.Map
	lost       *ebpf.Map
	stats      *ebpf.Map // km_tcp_stats
	full       *ebpf.Map // km_tcp_full
	records    *ebpf.Map // km_records: the kernel sends close records while 1
	iter       *link.Iter
	namespaces func() []string
	metrics    *metrics.Metrics
	accessLog  *atomic.Bool
	alog       *slog.Logger // where access log lines go
	log        *slog.Logger
	bootTime   time.Time // wall time of ktime 0, to date records

	index atomic.Pointer[index]

	mu        sync.Mutex
	lostSeen  uint64
	fullSeen  uint64
	recordsOn bool

	flushMu sync.Mutex
	seen    map[bpf.KmeshTcpStatsKey]*counted

	reader *ringbuf.Reader
	done   chan struct{}
}

// counted is one key of km_tcp_stats: the labels it was first seen with
// (kept, so a mesh change never moves counts between series) and the sums
// already added to them.
type counted struct {
	counters *metrics.TCPCounters
	last     bpf.KmeshTcpStatsValue
}

// Options wire Telemetry to the daemon.
type Options struct {
	Maps *bpf.KmeshMaps
	// Iter is the km_conn_iter program; Namespaces lists the enrolled
	// network namespaces (paths) whose connections it walks.
	Iter       *ebpf.Program
	Namespaces func() []string
	Metrics    *metrics.Metrics
	AccessLog  *atomic.Bool // the run-time switch of the access log
	// AccessLogger receives one record per closed connection while the
	// switch is on (JSON or text lines, to stdout or a file).
	AccessLogger *slog.Logger
	Log          *slog.Logger
}

// Start begins reading records.
func Start(o Options) (*Telemetry, error) {
	it, err := link.AttachIter(link.IterOptions{Program: o.Iter})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", bpf.KmeshProgKmConnIter, err)
	}
	rd, err := ringbuf.NewReader(o.Maps.KmEvents)
	if err != nil {
		it.Close()
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshMapKmEvents, err)
	}
	t := &Telemetry{
		events:     o.Maps.KmEvents,
		lost:       o.Maps.KmEventsLost,
		stats:      o.Maps.KmTcpStats,
		full:       o.Maps.KmTcpFull,
		records:    o.Maps.KmRecords,
		iter:       it,
		namespaces: o.Namespaces,
		metrics:    o.Metrics,
		accessLog:  o.AccessLog,
		alog:       o.AccessLogger,
		log:        o.Log,
		bootTime:   bootTime(),
		seen:       map[bpf.KmeshTcpStatsKey]*counted{},
		reader:     rd,
		done:       make(chan struct{}),
	}
	if t.namespaces == nil {
		t.namespaces = func() []string { return nil }
	}
	t.index.Store(newIndex(&model.Mesh{}))
	// Losses before this daemon started were reported by an earlier one.
	t.lostSeen, _ = sumPerCPU(t.lost)
	t.fullSeen, _ = sumPerCPU(t.full)
	// Counts a previous kmeshd already exported start this one's series
	// at zero: a restart is a counter reset, as in any process.
	t.readStats(false)
	t.syncRecords()
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
	// Records off: with no reader, they would only fill the buffer.
	t.records.Put(uint32(0), uint32(0))
	return errors.Join(err, t.iter.Close())
}

// syncRecords tells the kernel whether to send close records: only while
// the access log is on.
func (t *Telemetry) syncRecords() {
	on := t.accessLog.Load()
	t.mu.Lock()
	defer t.mu.Unlock()
	if on == t.recordsOn {
		return
	}
	v := uint32(0)
	if on {
		v = 1
	}
	if err := t.records.Put(uint32(0), v); err != nil {
		t.log.Warn("switch connection records", "err", err)
		return
	}
	t.recordsOn = on
}

// AccessLogChanged tells the kernel at once whether to send records
// (the access log was switched) and wakes the reader, which polls only
// while records are on.
func (t *Telemetry) AccessLogChanged() {
	t.syncRecords()
	if err := t.reader.Flush(); err != nil && !errors.Is(err, os.ErrClosed) {
		t.log.Warn("wake the connection record reader", "err", err)
	}
}

// pollInterval bounds how late a record is read while records are on: the
// kernel side wakes the reader only when records pile up
// (bpf/sockops.c). While they are off (the access log off) the reader
// sleeps until AccessLogChanged or Close wakes it: no wakeup at all, so
// an idle kmeshd costs nothing here whatever the connection rate.
const pollInterval = 100 * time.Millisecond

func (t *Telemetry) read() {
	defer close(t.done)
	var rec ringbuf.Record
	for {
		t.syncRecords()
		t.mu.Lock()
		on := t.recordsOn
		t.mu.Unlock()
		if on {
			t.reader.SetDeadline(time.Now().Add(pollInterval))
		} else {
			t.reader.SetDeadline(time.Time{})
		}
		err := t.reader.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, ringbuf.ErrFlushed) {
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
	if bpf.KmeshKmConnEventType(ev.Type) != bpf.KmeshKmConnEventTypeKM_CONN_CLOSE || !t.accessLog.Load() {
		return
	}
	t.writeAccessLog(ev, t.labels(ev))
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
	src, dst := endpoints(ev)
	return t.labelsOf(bpf.KmeshKmConnDirection(ev.Direction), src, dst, dialed(ev))
}

func (t *Telemetry) labelsOf(dir bpf.KmeshKmConnDirection, src, dst, dialed netip.AddrPort) metrics.TCPLabels {
	ix := t.index.Load()
	sw, dw := ix.workload(src.Addr()), ix.workload(dst.Addr())
	l := metrics.TCPLabels{
		Reporter:           metrics.ReporterSource,
		DestinationService: hostname(ix.serviceOf(dialed, dw, dst.Port())),
		// Without mutual TLS (yet), a destination knows it got plain text;
		// a source cannot know what the destination required.
		ConnectionSecurityPolicy: metrics.Unknown,
	}
	if dir == bpf.KmeshKmConnDirectionKM_CONN_INBOUND {
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

// Connections lists the live connections of the enrolled namespaces,
// oldest first, with their bytes and state as the kernel has them now.
func (t *Telemetry) Connections() []api.Connection {
	rows := t.walk()
	ix := t.index.Load()
	out := make([]api.Connection, 0, len(rows))
	for i := range rows {
		r := &rows[i]
		src, dst, dial := rowEndpoints(r)
		conn := api.Connection{
			Source:      api.Peer{Address: src.String()},
			Destination: api.Peer{Address: dst.String()},
			Start:       t.bootTime.Add(time.Duration(r.StartNs)),
			State:       TCPState(r.State),
		}
		// From the source's side: the client socket's own sense, or the
		// server socket's reversed.
		conn.BytesSent, conn.BytesReceived = r.BytesSent, r.BytesReceived
		if bpf.KmeshKmConnDirection(r.Key.Direction) == bpf.KmeshKmConnDirectionKM_CONN_INBOUND {
			conn.BytesSent, conn.BytesReceived = r.BytesReceived, r.BytesSent
		}
		if w := ix.workload(src.Addr()); w != nil {
			conn.Source.Workload = w.Key()
		}
		dw := ix.workload(dst.Addr())
		if dw != nil {
			conn.Destination.Workload = dw.Key()
		}
		if s := ix.serviceOf(dial, dw, dst.Port()); s != nil {
			conn.Service = s.Key()
		}
		out = append(out, conn)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// rowEndpoints returns the source and destination of a walked connection
// and the service address dialed, whichever end the row is.
func rowEndpoints(r *bpf.KmeshConnRow) (src, dst, dial netip.AddrPort) {
	local := netip.AddrPortFrom(bpf.WordsAddr(r.Key.LocalAddr), r.LocalPort)
	remote := netip.AddrPortFrom(bpf.WordsAddr(r.Key.RemoteAddr), r.RemotePort)
	if r.Key.ServiceAddr != [4]uint32{} {
		dial = netip.AddrPortFrom(bpf.WordsAddr(r.Key.ServiceAddr), r.Key.ServicePort)
	}
	if bpf.KmeshKmConnDirection(r.Key.Direction) == bpf.KmeshKmConnDirectionKM_CONN_OUTBOUND {
		return local, remote, dial
	}
	return remote, local, dial
}

// keyEndpoints is rowEndpoints for a counters' key: the client's port is
// not part of it.
func keyEndpoints(k *bpf.KmeshTcpStatsKey) (src, dst, dial netip.AddrPort) {
	local, remote := bpf.WordsAddr(k.LocalAddr), bpf.WordsAddr(k.RemoteAddr)
	if k.ServiceAddr != [4]uint32{} {
		dial = netip.AddrPortFrom(bpf.WordsAddr(k.ServiceAddr), k.ServicePort)
	}
	if bpf.KmeshKmConnDirection(k.Direction) == bpf.KmeshKmConnDirectionKM_CONN_OUTBOUND {
		return netip.AddrPortFrom(local, 0), netip.AddrPortFrom(remote, k.ServerPort), dial
	}
	return netip.AddrPortFrom(remote, 0), netip.AddrPortFrom(local, k.ServerPort), dial
}

// walk runs km_conn_iter in each enrolled namespace: it lists their live
// connections and adds the bytes moved since the last walk to the
// kernel's counters. A namespace that cannot be walked is logged and
// left out.
func (t *Telemetry) walk() []bpf.KmeshConnRow {
	var rows []bpf.KmeshConnRow
	for _, path := range t.namespaces() {
		r, err := t.walkNetns(path)
		if err != nil {
			t.log.Warn("walk connections", "netns", path, "err", err)
		}
		rows = append(rows, r...)
	}
	return rows
}

func (t *Telemetry) walkNetns(path string) ([]bpf.KmeshConnRow, error) {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	// The iterator walks the namespace of the thread that opens it.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("netns of this thread: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter: %w", err)
	}
	rd, openErr := t.iter.Open()
	if err := netns.Set(orig); err != nil {
		if openErr == nil {
			rd.Close()
		}
		// The thread stays locked: Go discards it when this goroutine ends.
		return nil, fmt.Errorf("return to own netns: %w", err)
	}
	runtime.UnlockOSThread()
	if openErr != nil {
		return nil, fmt.Errorf("open %s: %w", bpf.KmeshProgKmConnIter, openErr)
	}
	defer rd.Close()
	b, err := io.ReadAll(rd)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.KmeshProgKmConnIter, err)
	}
	size := int(unsafe.Sizeof(bpf.KmeshConnRow{}))
	rows := make([]bpf.KmeshConnRow, 0, len(b)/size)
	for off := 0; off+size <= len(b); off += size {
		rows = append(rows, *(*bpf.KmeshConnRow)(unsafe.Pointer(&b[off])))
	}
	return rows, nil
}

// Flush brings the istio_tcp_* counters up to the kernel's: it walks the
// live connections (their bytes so far) and adds what each key of
// km_tcp_stats counted since the last flush. The metrics handler runs it
// before every scrape.
func (t *Telemetry) Flush() {
	t.flushMu.Lock()
	defer t.flushMu.Unlock()
	t.walk()
	t.readStats(true)
	t.pollFull()
}

// readStats adds each key's growth since the last read to its counters;
// with add false it only remembers where the counts stand.
func (t *Telemetry) readStats(add bool) {
	var (
		key    bpf.KmeshTcpStatsKey
		perCPU []bpf.KmeshTcpStatsValue
	)
	it := t.stats.Iterate()
	for it.Next(&key, &perCPU) {
		var sum bpf.KmeshTcpStatsValue
		for _, v := range perCPU {
			sum.Opened += v.Opened
			sum.Closed += v.Closed
			sum.BytesSent += v.BytesSent
			sum.BytesReceived += v.BytesReceived
		}
		c := t.seen[key]
		if c == nil {
			c = &counted{}
			if add {
				src, dst, dial := keyEndpoints(&key)
				c.counters = t.metrics.TCP(t.labelsOf(bpf.KmeshKmConnDirection(key.Direction), src, dst, dial))
			} else {
				c.last = sum
			}
			t.seen[key] = c
		}
		if add {
			if c.counters == nil {
				src, dst, dial := keyEndpoints(&key)
				c.counters = t.metrics.TCP(t.labelsOf(bpf.KmeshKmConnDirection(key.Direction), src, dst, dial))
			}
			sent, received := sum.BytesSent-c.last.BytesSent, sum.BytesReceived-c.last.BytesReceived
			if bpf.KmeshKmConnDirection(key.Direction) == bpf.KmeshKmConnDirectionKM_CONN_OUTBOUND {
				sent, received = received, sent // Istio's sense: sent is the destination's
			}
			c.counters.Add(sum.Opened-c.last.Opened, sum.Closed-c.last.Closed, sent, received)
			c.last = sum
		}
	}
	if err := it.Err(); err != nil {
		t.log.Warn("read TCP counters", "map", bpf.KmeshMapKmTcpStats, "err", err)
	}
}

// TCPState names a kernel TCP state (BPF_TCP_*, TCP_INFO's tcpi_state) as
// ss(8) does, lower case.
func TCPState(s uint8) string {
	names := [...]string{1: "established", 2: "syn_sent", 3: "syn_recv", 4: "fin_wait1", 5: "fin_wait2",
		6: "time_wait", 7: "close", 8: "close_wait", 9: "last_ack", 10: "listen", 11: "closing", 12: "new_syn_recv"}
	if int(s) < len(names) && names[s] != "" {
		return names[s]
	}
	return fmt.Sprintf("state_%d", s)
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

// sumPerCPU reads the one counter of a per-CPU array.
func sumPerCPU(m *ebpf.Map) (uint64, error) {
	var perCPU []uint64
	if err := m.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read %s: %w", m.String(), err)
	}
	var total uint64
	for _, n := range perCPU {
		total += n
	}
	return total, nil
}

// pollFull logs connections the kernel could not count: km_tcp_stats full.
func (t *Telemetry) pollFull() {
	total, err := sumPerCPU(t.full)
	if err != nil {
		t.log.Warn("read uncounted connections", "err", err)
		return
	}
	t.mu.Lock()
	delta := total - t.fullSeen
	t.fullSeen = total
	t.mu.Unlock()
	if delta > 0 {
		t.log.Warn("connections not counted: TCP counter map full", "map", bpf.KmeshMapKmTcpStats, "connections", delta)
	}
}

func (t *Telemetry) pollLost() {
	total, err := sumPerCPU(t.lost)
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

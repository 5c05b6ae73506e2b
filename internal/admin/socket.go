package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where a node's kmeshd serves its control socket unless
// --admin-socket says otherwise.
func DefaultSocket(node string) string { return filepath.Join("/run/kmesh", node, "admin.sock") }

// ListenUnix binds the control socket at path for h. The socket is mode
// 0600 in a directory it creates with mode 0700, and each request is
// served only if the peer's uid (SO_PEERCRED) is 0: the file mode keeps
// other users from connecting, the credential check holds even if the
// mode is changed or the directory is shared.
//
// A socket file left by a kmeshd that died is replaced; one a live kmeshd
// answers on is an error, so two daemons never share a socket.
func ListenUnix(name, path string, h http.Handler) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("%s socket %s: %w", name, path, err)
	}
	if err := removeStale(path); err != nil {
		return nil, fmt.Errorf("%s socket %s: %w", name, path, err)
	}
	// The umask makes the socket 0600 from birth, so there is no moment a
	// non-root user could connect; Chmod below says so once more.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("%s socket %s: %w", name, path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("%s socket %s: %w", name, path, err)
	}
	srv := &http.Server{
		Handler:           rootOnly(h),
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext:       withPeer,
	}
	return &Server{name: name, ln: ln, srv: srv}, nil
}

// removeStale removes a socket file at path that nobody listens on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return errors.New("exists and is not a socket")
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return errors.New("in use: another kmeshd serves it (give each instance its own --admin-socket)")
	}
	return os.Remove(path)
}

type peerKey struct{}

// peer is the credential of a control socket connection.
type peer struct {
	uid int
	err error
}

// withPeer records the peer's credentials of a Unix connection.
func withPeer(ctx context.Context, c net.Conn) context.Context {
	p := peer{uid: -1}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		p.err = fmt.Errorf("not a unix connection: %T", c)
		return context.WithValue(ctx, peerKey{}, p)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		p.err = err
		return context.WithValue(ctx, peerKey{}, p)
	}
	cerr := raw.Control(func(fd uintptr) {
		var cred *unix.Ucred
		cred, p.err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if p.err == nil {
			p.uid = int(cred.Uid)
		}
	})
	if cerr != nil {
		p.err = cerr
	}
	return context.WithValue(ctx, peerKey{}, p)
}

// rootOnly refuses every request whose peer is not root.
func rootOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := r.Context().Value(peerKey{}).(peer)
		switch {
		case !ok || p.err != nil:
			http.Error(w, fmt.Sprintf("admin socket: peer credentials unknown: %v", p.err), http.StatusForbidden)
		case p.uid != 0:
			http.Error(w, fmt.Sprintf("admin socket: uid %d is not root", p.uid), http.StatusForbidden)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

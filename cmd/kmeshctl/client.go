package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// client calls one kmeshd's admin API, over TCP (read-only) or over its
// control socket (changes too).
type client struct {
	addr   string // as given, for messages
	base   string // http://host:port
	hc     *http.Client
	socket bool // addr is the control socket's path
}

func newClient(addr string, timeout time.Duration) *client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &client{addr: addr, base: strings.TrimRight(base, "/"), hc: &http.Client{Timeout: timeout}}
}

// newSocketClient calls the control socket at path.
func newSocketClient(path string, timeout time.Duration) *client {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}
	return &client{addr: path, base: "http://kmeshd", socket: true,
		hc: &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dial}}}
}

// reachErr explains why kmeshd could not be reached.
func (c *client) reachErr(err error) error {
	if !c.socket {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("cannot reach kmeshd at %s: connection refused (is kmeshd running? is --admin-address right?)", c.addr)
		}
		return fmt.Errorf("cannot reach kmeshd at %s: %w", c.addr, err)
	}
	switch {
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("cannot reach kmeshd's admin socket %s: permission denied (changes to kmeshd need root)", c.addr)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("cannot reach kmeshd's admin socket %s: connection refused (is kmeshd running? is --admin-socket right?)", c.addr)
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("cannot reach kmeshd's admin socket %s: no such socket (is kmeshd running? is --admin-socket right?)", c.addr)
	}
	return fmt.Errorf("cannot reach kmeshd's admin socket %s: %w", c.addr, err)
}

// do sends one request and returns the body of a 2xx answer.
func (c *client) do(ctx context.Context, method, path string, query url.Values) ([]byte, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.reachErr(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(body))
		if msg == "" {
			msg = resp.Status
		}
		return nil, &apiError{addr: c.addr, status: resp.StatusCode, msg: msg}
	}
	return body, nil
}

// apiError is an answer of kmeshd other than 2xx.
type apiError struct {
	addr   string
	status int
	msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("kmeshd at %s: %s", e.addr, e.msg) }

// hasStatus reports whether err is kmeshd's answer with the HTTP status.
func hasStatus(err error, status int) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.status == status
}

func (c *client) getJSON(ctx context.Context, path string, query url.Values, v any) error {
	body, err := c.do(ctx, http.MethodGet, path, query)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("kmeshd at %s: %s: unexpected answer: %w", c.addr, path, err)
	}
	return nil
}

func (c *client) postJSON(ctx context.Context, path string, query url.Values, v any) error {
	body, err := c.do(ctx, http.MethodPost, path, query)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("kmeshd at %s: %s: unexpected answer: %w", c.addr, path, err)
	}
	return nil
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// client calls one kmeshd's admin API.
type client struct {
	addr string // as given, for messages
	base string // http://host:port
	hc   *http.Client
}

func newClient(addr string, timeout time.Duration) *client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &client{addr: addr, base: strings.TrimRight(base, "/"), hc: &http.Client{Timeout: timeout}}
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
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil, fmt.Errorf("cannot reach kmeshd at %s: connection refused (is kmeshd running? is --admin-address right?)", c.addr)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot reach kmeshd at %s: %w", c.addr, err)
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

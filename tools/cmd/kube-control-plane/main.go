// Command kube-control-plane runs a Kubernetes control plane for tests in
// one process: an embedded etcd and the stock kube-apiserver (the app
// package of k8s.io/kubernetes), both on loopback at free ports. It writes
// a kubeconfig with an admin token, installs the CustomResourceDefinitions
// given with --crds and waits until they are established, then prints one
// line on stdout:
//
//	ready kubeconfig=DIR/kubeconfig server=https://127.0.0.1:PORT
//
// No controller-manager, scheduler or kubelet runs: whoever uses it creates
// the objects those would (pod status, EndpointSlices, ServiceAccounts).
// SIGTERM or SIGINT shuts the API server down, then etcd.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiext "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"sigs.k8s.io/yaml"

	"go.etcd.io/etcd/server/v3/embed"
)

type crdList []string

func (c *crdList) String() string     { return fmt.Sprint(*c) }
func (c *crdList) Set(s string) error { *c = append(*c, s); return nil }

func main() {
	var (
		dir       = flag.String("dir", "", "state directory: etcd data, certificates, kubeconfig (default: a new temporary directory, removed on exit)")
		serviceIP = flag.String("service-cluster-ip-range", "10.96.0.0/16", "the range Service cluster IPs come from")
		verbose   = flag.Int("v", 0, "kube-apiserver log verbosity")
		crds      crdList
	)
	flag.Var(&crds, "crds", "YAML file of CustomResourceDefinitions to install (repeatable)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*dir, *serviceIP, *verbose, crds, log); err != nil {
		log.Error("kube-control-plane failed", "err", err)
		os.Exit(1)
	}
}

func run(dir, serviceIPRange string, verbose int, crds []string, log *slog.Logger) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "kube-control-plane-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]

	etcd, err := startEtcd(filepath.Join(dir, "etcd"), etcdClient, etcdPeer)
	if err != nil {
		return err
	}
	defer etcd.Close()
	log.Info("etcd ready", "client", fmt.Sprintf("http://127.0.0.1:%d", etcdClient))

	token, err := writeAuth(dir)
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, fmt.Appendf(nil, kubeconfigTemplate, server, token), 0o600); err != nil {
		return err
	}

	cmd := app.NewAPIServerCommand()
	cmd.SetArgs([]string{
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdClient),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", apiPort),
		// The default reconciler refuses a loopback advertise address.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
		"--token-auth-file=" + filepath.Join(dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=" + serviceIPRange,
		"--enable-priority-and-fairness=false",
		fmt.Sprintf("--v=%d", verbose),
	})
	apiDone := make(chan int, 1)
	go func() { apiDone <- cli.Run(cmd) }()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := waitReady(ctx, kubeconfig, apiDone); err != nil {
		return err
	}
	// Each CRD file has its own budget: on a loaded machine the API server
	// may take most of the first to become ready, and a large file (the
	// Gateway API's, with HTTPRoute's schema) takes a while to establish.
	for _, f := range crds {
		fctx, fcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err := installCRDs(fctx, kubeconfig, f, log)
		fcancel()
		if err != nil {
			return err
		}
	}
	fmt.Printf("ready kubeconfig=%s server=%s\n", kubeconfig, server)

	// The API server stops on SIGTERM or SIGINT (its command installs the
	// handler); then etcd stops with the deferred Close.
	if code := <-apiDone; code != 0 {
		return fmt.Errorf("kube-apiserver exited with status %d", code)
	}
	log.Info("kube-apiserver stopped")
	return nil
}

const kubeconfigTemplate = `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func startEtcd(dir string, client, peer int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "kube-control-plane"
	cfg.Dir = dir
	cfg.LogLevel = "error"
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", client)}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peer)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ListenMetricsUrls = nil
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcd: not ready after 60s")
	}
}

// writeAuth writes the service account signing key pair and a token file
// with one admin token, which it returns.
func writeAuth(dir string) (string, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", err
	}
	files := map[string][]byte{
		"sa.key": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}),
		"sa.pub": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
	}
	b := make([]byte, 16)
	rand.Read(b)
	token := hex.EncodeToString(b)
	files["tokens.csv"] = []byte(token + ",admin,admin,system:masters\n")
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return "", err
		}
	}
	return token, nil
}

// waitReady waits until /readyz answers ok.
func waitReady(ctx context.Context, kubeconfig string, apiDone <-chan int) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var last error
	for {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && bytes.Equal(bytes.TrimSpace(body), []byte("ok")) {
			return nil
		}
		last = err
		select {
		case code := <-apiDone:
			return fmt.Errorf("kube-apiserver exited with status %d", code)
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// installCRDs creates (or updates) every CustomResourceDefinition in a
// multi-document YAML file and waits until each is established.
func installCRDs(ctx context.Context, kubeconfig, file string, log *slog.Logger) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cs, err := apiext.NewForConfig(cfg)
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var names []string
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var crd apiextv1.CustomResourceDefinition
		if err := yaml.Unmarshal(doc, &crd); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if crd.Kind != "CustomResourceDefinition" {
			continue
		}
		c := cs.ApiextensionsV1().CustomResourceDefinitions()
		_, err = c.Create(ctx, &crd, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			old, gerr := c.Get(ctx, crd.Name, metav1.GetOptions{})
			if gerr != nil {
				return gerr
			}
			crd.ResourceVersion = old.ResourceVersion
			_, err = c.Update(ctx, &crd, metav1.UpdateOptions{})
		}
		if err != nil {
			return fmt.Errorf("%s: crd %s: %w", file, crd.Name, err)
		}
		names = append(names, crd.Name)
	}
	for _, n := range names {
		for {
			crd, err := cs.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("crd %s: %w", n, err)
			}
			if established(crd) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("crd %s: not established: %w", n, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	log.Info("crds installed", "file", file, "crds", len(names))
	return nil
}

func established(crd *apiextv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextv1.Established && c.Status == apiextv1.ConditionTrue {
			return true
		}
	}
	return false
}

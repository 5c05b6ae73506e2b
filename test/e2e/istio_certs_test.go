//go:build e2e

package e2e

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/source/kube"
	"github.com/kmesh-go/kmesh/internal/testbed"
)

// barePod creates a Pod object with no test-bed pod behind it: kmeshd's own
// pod, to which its token is bound.
func (e *istioEnv) barePod(ns, name, sa, node string) *corev1.Pod {
	e.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "kmeshd", Image: "kmeshd"}}},
	}
	created, err := e.kube.CoreV1().Pods(ns).Create(e.ctx(), pod, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return created
}

// podToken writes a token of the pod's service account, bound to the pod,
// with audience istio-ca: what the kmesh DaemonSet's projected volume holds.
func (e *istioEnv) podToken(pod *corev1.Pod) string {
	e.t.Helper()
	exp := int64(3600)
	tr, err := e.kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(e.ctx(), pod.Spec.ServiceAccountName, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			Audiences: []string{"istio-ca"}, ExpirationSeconds: &exp,
			BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	path := filepath.Join(e.dir, pod.Namespace+"-"+pod.Name+".token")
	if err := os.WriteFile(path, []byte(tr.Status.Token), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// rootCert waits for istiod's istio-ca-root-cert ConfigMap in ns and
// writes its root-cert.pem.
func (e *istioEnv) rootCert(ns string) (string, []*x509.Certificate) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		cm, err := e.kube.CoreV1().ConfigMaps(ns).Get(e.ctx(), "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && cm.Data["root-cert.pem"] != "" {
			roots, err := identity.ParseCertificates([]byte(cm.Data["root-cert.pem"]))
			if err != nil {
				e.t.Fatal(err)
			}
			path := filepath.Join(e.dir, ns+"-root-cert.pem")
			if err := os.WriteFile(path, []byte(cm.Data["root-cert.pem"]), 0o644); err != nil {
				e.t.Fatal(err)
			}
			return path, roots
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no istio-ca-root-cert in %s after 30s (%v)", ns, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// caAddr is istiod's CA (its 15012), with the name its certificate carries.
func (e *istioEnv) caAddr() string { return fmt.Sprintf("127.0.0.1:%d", e.ports["secureGRPCAddr"]) }

const istiodName = "istiod.istio-system.svc"

// TestIstioCerts: kmeshd gets its node's workload certificates from the
// stock istiod's CA with ztunnel's impersonation: its own pod-bound token
// (audience istio-ca), ImpersonatedIdentity, its service account in
// CA_TRUSTED_NODE_ACCOUNTS. istiod signs identities with a pod on the
// caller's node and refuses others, and refuses callers it does not trust.
func TestIstioCerts(t *testing.T) {
	m, env := newIstioMesh(t, nil)
	ctl, err := testbed.Build("github.com/kmesh-go/kmesh/cmd/kmeshctl")
	if err != nil {
		t.Fatal(err)
	}
	// node-a runs apps/sleep; apps/remote runs only on node-b.
	env.serviceAccount(istioAppsNs, "sleep")
	env.serviceAccount(istioAppsNs, "remote")
	m.addPod("node-a", "client-a", "10.71.1.10")
	env.podAs(m.pods["client-a"], istioAppsNs, "sleep", map[string]string{"app": "client"})
	m.addPod("node-b", "client-b", "10.71.2.10")
	env.podAs(m.pods["client-b"], istioAppsNs, "remote", map[string]string{"app": "client"})

	env.namespace("kmesh-system", nil)
	env.serviceAccount("kmesh-system", "kmesh")
	kmeshPod := env.barePod("kmesh-system", "kmesh-node-a", "kmesh", "node-a")
	token := env.podToken(kmeshPod)
	rootFile, roots := env.rootCert("kmesh-system")

	k := m.startKmeshdBin(m.kmeshd, "node-a", "", "--xds-address", env.XDSAddr, "--kubeconfig", env.kubeconfig,
		"--cluster-id", "Kubernetes", "--ca-address", env.caAddr(), "--ca-server-name", istiodName,
		"--ca-root-cert", rootFile, "--ca-token-file", token, "--cert-ttl", "1h")

	sleep := "spiffe://cluster.local/ns/apps/sa/sleep"
	c := waitCerts(t, ctl, k, 60*time.Second, func(c api.Certs) string {
		for _, ct := range c.Certificates {
			if ct.Identity == sleep && ct.State == "valid" {
				return ""
			}
		}
		return "no valid certificate for " + sleep
	})
	for _, ct := range c.Certificates {
		if strings.Contains(ct.Identity, "/sa/remote") {
			t.Errorf("node-a holds %s, whose only pod is on node-b", ct.Identity)
		}
		if ct.Identity == sleep {
			if d := ct.NotAfter.Sub(ct.NotBefore); d < 55*time.Minute || d > 65*time.Minute {
				t.Errorf("lifetime %v, want the 1h asked for", d)
			}
		}
	}
	if !strings.HasPrefix(c.CA, "istiod ") {
		t.Errorf("ca %q, want istiod", c.CA)
	}
	rootSerials := map[string]bool{}
	for _, r := range c.Roots {
		rootSerials[r.Serial] = true
	}
	if !rootSerials[roots[0].SerialNumber.Text(16)] {
		t.Errorf("roots %+v lack istiod's root %s", c.Roots, roots[0].SerialNumber.Text(16))
	}

	// With a CA, an enrolled pod is marked for istiod as taking HBONE.
	deadline := time.Now().Add(30 * time.Second)
	for env.annotation(istioAppsNs, "client-a", kube.AmbientRedirectionAnnotation) != kube.RedirectionEnabled {
		if time.Now().After(deadline) {
			t.Fatalf("client-a lacks %s=enabled after 30s", kube.AmbientRedirectionAnnotation)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The same client kmeshd uses, asking directly: istiod's node
	// authorizer decides per identity and per caller.
	ask := func(tokenFile, sa string) error {
		ca, err := identity.NewIstiodCA(identity.IstiodConfig{
			Address: env.caAddr(), ServerName: istiodName, RootCertFile: rootFile, TokenFile: tokenFile,
			ClusterID: "Kubernetes", CertTTL: time.Hour,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer ca.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		id := identity.Identity{TrustDomain: "cluster.local", Namespace: istioAppsNs, ServiceAccount: sa}
		cert, err := identity.NewCache(ca).Certificate(ctx, id)
		if err != nil {
			return err
		}
		if _, err := identity.Verify([]*x509.Certificate{cert.Leaf}, ca.Roots(), time.Now()); err != nil {
			t.Errorf("%s: certificate does not chain to istiod's root: %v", sa, err)
		}
		return nil
	}
	if err := ask(token, "sleep"); err != nil {
		t.Errorf("kmeshd's token, apps/sleep (a pod on node-a): %v", err)
	}
	if err := ask(token, "remote"); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Errorf("kmeshd's token, apps/remote (no pod on node-a): err %v, want Unauthenticated", err)
	}
	// A pod of node-a whose service account istiod does not trust.
	env.serviceAccount("kmesh-system", "impostor")
	impostor := env.podToken(env.barePod("kmesh-system", "impostor", "impostor", "node-a"))
	if err := ask(impostor, "sleep"); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Errorf("untrusted caller, apps/sleep: err %v, want Unauthenticated", err)
	}
}

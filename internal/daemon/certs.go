package daemon

import (
	"cmp"
	"context"
	"log/slog"

	"github.com/kmesh-go/kmesh/internal/identity"
	"github.com/kmesh-go/kmesh/internal/model"
)

// newCertSource makes the workload certificate cache of cfg, or nil when
// the mesh has no CA. The istiod client defaults to the xDS root and token.
func newCertSource(cfg Config, log *slog.Logger) (*identity.Cache, error) {
	ic := cfg.Identity
	if ic.CAAddress != "" {
		ic.CARootCert = cmp.Or(ic.CARootCert, cfg.XDS.RootCertFile)
		ic.CATokenFile = cmp.Or(ic.CATokenFile, cfg.XDS.TokenFile)
		ic.ClusterID = cmp.Or(ic.ClusterID, cfg.XDS.ClusterID)
	}
	c, err := ic.NewSource()
	if err != nil || c == nil {
		return nil, err
	}
	c.SetLogger(log)
	log.Info("workload certificates", "ca", c.IssuerName(), "trust_domain", c.TrustDomain(), "cert_ttl", ic.CertTTL)
	return c, nil
}

// trackIdentities has the certificate cache keep one certificate per
// identity of this node's workloads (a file names them with their node;
// istiod sends the node of each pod), fetched as soon as a workload
// appears and renewed at half-life. With istiod, these are exactly the
// identities its node authorizer lets this kmeshd impersonate.
func (d *daemon) trackIdentities(m *model.Mesh) {
	if d.certs == nil {
		return
	}
	counts := map[identity.Identity]int{}
	for i := range m.Workloads {
		w := &m.Workloads[i]
		if w.Node != d.node {
			continue
		}
		counts[workloadIdentity(w, d.certs.TrustDomain())]++
	}
	d.certs.SetTracked(counts)
}

// workloadIdentity is a workload's SPIFFE identity; no service account
// means "default", as for a Kubernetes pod.
func workloadIdentity(w *model.Workload, td string) identity.Identity {
	return identity.OfWorkload(td, w.Namespace, w.ServiceAccount)
}

// runCerts renews certificates until ctx ends.
func (d *daemon) runCerts(ctx context.Context) {
	if d.certs != nil {
		go d.certs.Run(ctx)
	}
}

package daemon

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"

	"github.com/kmesh-go/kmesh/internal/admin/api"
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

// certsDoc is /certs.
func certsDoc(c *identity.Cache) api.Certs {
	doc := api.Certs{CA: c.IssuerName(), TrustDomain: c.TrustDomain()}
	for _, s := range c.Status() {
		ct := api.Cert{Identity: s.Identity.String(), Workloads: s.Refs, RefreshAt: s.RefreshAt.UTC()}
		switch {
		case s.Leaf != nil:
			ct.State = "valid"
			ct.Serial = s.Leaf.SerialNumber.Text(16)
			ct.NotBefore, ct.NotAfter = s.Leaf.NotBefore.UTC(), s.Leaf.NotAfter.UTC()
			for _, x := range s.Chain[1:] {
				ct.Chain = append(ct.Chain, x.Subject.String())
			}
		case s.Err != nil:
			ct.State = "failed"
		default:
			ct.State = "pending"
		}
		if s.Err != nil {
			ct.Error = s.Err.Error()
		}
		doc.Certificates = append(doc.Certificates, ct)
	}
	for _, r := range c.RootCerts() {
		sum := sha256.Sum256(r.Raw)
		doc.Roots = append(doc.Roots, api.Root{
			Subject: r.Subject.String(), Serial: r.SerialNumber.Text(16), NotAfter: r.NotAfter.UTC(), SHA256: hex.EncodeToString(sum[:]),
		})
	}
	return doc
}

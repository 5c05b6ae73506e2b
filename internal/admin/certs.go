package admin

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/kmesh-go/kmesh/internal/admin/api"
	"github.com/kmesh-go/kmesh/internal/identity"
)

// CertsDoc is /certs for a certificate cache: its identities, their
// certificates, and the roots it accepts. kmeshd and kmeshd tunnel serve it.
func CertsDoc(c *identity.Cache) api.Certs {
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

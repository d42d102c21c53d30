package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"os"
	"slices"
	"time"

	"postern.dev/postern/internal/store"
)

// maxPEMFileSize bounds the upstream certificate and key files.
const maxPEMFileSize = 1 << 20

// authority is one loaded signing authority. Values are immutable once
// built; a change of its timestamps makes a new value sharing the parsed
// certificates and the signer.
type authority struct {
	rec      store.Authority     // as stored (timestamps authoritative)
	cert     *x509.Certificate   // the CA certificate that signs SVIDs
	chain    []*x509.Certificate // above cert, root last (upstream only)
	anchor   *x509.Certificate   // what goes into the bundle: top of cert+chain
	svidCA   []*x509.Certificate // what follows the leaf in an SVID chain
	notAfter time.Time           // earliest NotAfter of cert and chain
	signer   crypto.Signer       // nil when expired (key not opened)
	selfRoot bool                // a self-signed root without chain
}

// publishEnd is when the authority leaves the bundle.
func (a *authority) publishEnd() time.Time {
	end := a.notAfter
	if !a.rec.ExpireAt.IsZero() && a.rec.ExpireAt.Before(end) {
		end = a.rec.ExpireAt
	}
	return end
}

// withRecord returns a copy of a with the record's timestamps replaced.
func (a *authority) withRecord(rec store.Authority) *authority {
	b := *a
	b.rec = rec
	return &b
}

// sealAD is the additional data a private key is sealed with: it binds the
// sealed key to the authority id (and to this use).
func sealAD(id string) []byte { return []byte("postern/ca/authority/" + id) }

// subjectKeyID computes RFC 7093 method 1: the leftmost 160 bits of the
// SHA-256 of the subjectPublicKey bit string.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

// randomSerial returns a positive 128-bit random serial number.
func randomSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
			return nil, err
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}

// authorityID is the stable id of a CA certificate: hex of its subject key
// id, or of the RFC 7093 key id when the certificate has none.
func authorityID(cert *x509.Certificate) (string, error) {
	if len(cert.SubjectKeyId) > 0 {
		return hex.EncodeToString(cert.SubjectKeyId), nil
	}
	skid, err := subjectKeyID(cert.PublicKey)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(skid), nil
}

// newRoot creates a self-signed ECDSA P-256 root and its sealed record.
func (c *CA) newRoot(now, activateAt time.Time) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generate root key: %w", err)
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, fmt.Errorf("ca: root key id: %w", err)
	}
	id := hex.EncodeToString(skid)
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("ca: root serial: %w", err)
	}
	subject := c.cfg.Subject
	if len(subject.Organization) == 0 && subject.CommonName == "" {
		subject.Organization = []string{"Postern"}
		subject.CommonName = c.cfg.TrustDomain.Name() + " root"
	}
	if subject.SerialNumber == "" {
		// Distinct subjects keep chain building unambiguous across roots.
		subject.SerialNumber = id
	}
	tdURI, err := url.Parse(c.cfg.TrustDomain.IDString())
	if err != nil {
		return nil, fmt.Errorf("ca: trust domain uri: %w", err)
	}
	notBefore := now.Add(-clockSkew).Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              now.Add(c.cfg.CATTL).Truncate(time.Second),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          skid,
		URIs:                  []*url.URL{tdURI},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca: create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse root: %w", err)
	}
	rec := store.Authority{
		ID:         id,
		CertDER:    der,
		CreatedAt:  now.UTC().Truncate(time.Second),
		ActivateAt: activateAt.UTC().Truncate(time.Second),
	}
	if err := c.seal(&rec, key); err != nil {
		return nil, err
	}
	return c.assemble(rec, cert, nil, key)
}

// seal stores the PKCS #8 form of key in rec, sealed for rec.ID.
func (c *CA) seal(rec *store.Authority, key crypto.Signer) error {
	p8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("ca: marshal authority key: %w", err)
	}
	defer clear(p8)
	sealed, err := c.cfg.Sealer.Seal(p8, sealAD(rec.ID))
	if err != nil {
		return fmt.Errorf("ca: seal authority key: %w", err)
	}
	rec.Sealed = sealed
	rec.KEKID = c.cfg.Sealer.ID()
	return nil
}

// assemble derives the bundle anchor and the SVID chain of an authority.
func (c *CA) assemble(rec store.Authority, cert *x509.Certificate, chain []*x509.Certificate, signer crypto.Signer) (*authority, error) {
	all := append([]*x509.Certificate{cert}, chain...)
	a := &authority{
		rec:      rec,
		cert:     cert,
		chain:    chain,
		anchor:   all[len(all)-1],
		svidCA:   all[:len(all)-1],
		notAfter: cert.NotAfter,
		signer:   signer,
		selfRoot: len(chain) == 0 && isSelfSigned(cert),
	}
	for _, x := range chain {
		if x.NotAfter.Before(a.notAfter) {
			a.notAfter = x.NotAfter
		}
	}
	return a, nil
}

func isSelfSigned(cert *x509.Certificate) bool {
	return bytes.Equal(cert.RawIssuer, cert.RawSubject) && cert.CheckSignatureFrom(cert) == nil
}

// load turns a stored record into an authority. Records past their
// publication end are loaded without opening the key: they never sign.
func (c *CA) load(rec store.Authority, now time.Time) (*authority, error) {
	if prev, ok := c.cache[rec.ID]; ok && bytes.Equal(prev.rec.CertDER, rec.CertDER) && bytes.Equal(prev.rec.Sealed, rec.Sealed) && slices.EqualFunc(prev.rec.ChainDER, rec.ChainDER, bytes.Equal) {
		a := prev.withRecord(rec)
		if a.signer != nil || !now.Before(a.publishEnd()) {
			return a, nil
		}
	}
	cert, err := x509.ParseCertificate(rec.CertDER)
	if err != nil {
		return nil, fmt.Errorf("ca: authority %s: parse certificate: %w", rec.ID, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("ca: authority %s: not a CA certificate", rec.ID)
	}
	chain := make([]*x509.Certificate, 0, len(rec.ChainDER))
	for i, der := range rec.ChainDER {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ca: authority %s: parse chain certificate %d: %w", rec.ID, i, err)
		}
		chain = append(chain, x)
	}
	a, err := c.assemble(rec, cert, chain, nil)
	if err != nil {
		return nil, err
	}
	if !now.Before(a.publishEnd()) {
		return a, nil
	}
	p8, err := c.cfg.Sealer.Open(rec.Sealed, sealAD(rec.ID))
	if err != nil {
		return nil, fmt.Errorf("ca: authority %s: open key (kek %q): %w", rec.ID, rec.KEKID, err)
	}
	key, err := x509.ParsePKCS8PrivateKey(p8)
	clear(p8)
	if err != nil {
		return nil, fmt.Errorf("ca: authority %s: parse key: %w", rec.ID, err)
	}
	signer, err := matchingSigner(key, cert)
	if err != nil {
		return nil, fmt.Errorf("ca: authority %s: %w", rec.ID, err)
	}
	a.signer = signer
	c.cache[rec.ID] = a
	return a, nil
}

// matchingSigner checks that key is a signer for cert's public key.
func matchingSigner(key any, cert *x509.Certificate) (crypto.Signer, error) {
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", key)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("private key does not match the certificate")
	}
	return signer, nil
}

// importUpstream reads the upstream intermediate, its chain and its key from
// PEM files and checks them: a CA allowed to sign certificates, valid now,
// the key matching, and the chain (when given) verifying up to its top.
func (c *CA) importUpstream(now time.Time) (*authority, error) {
	certPEM, err := readBounded(c.cfg.UpstreamCert)
	if err != nil {
		return nil, fmt.Errorf("ca: upstream certificate: %w", err)
	}
	keyPEM, err := readBounded(c.cfg.UpstreamKey)
	if err != nil {
		return nil, fmt.Errorf("ca: upstream key: %w", err)
	}
	defer clear(keyPEM)
	var certs []*x509.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		x, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca: upstream certificate %d: %w", len(certs), err)
		}
		certs = append(certs, x)
	}
	if len(certs) == 0 {
		return nil, errors.New("ca: upstream certificate: no CERTIFICATE block")
	}
	cert, chain := certs[0], certs[1:]
	key, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: upstream key: %w", err)
	}
	signer, err := matchingSigner(key, cert)
	if err != nil {
		return nil, fmt.Errorf("ca: upstream key: %w", err)
	}
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return nil, errors.New("ca: upstream certificate: not a CA")
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, errors.New("ca: upstream certificate: key usage lacks certSign")
	case now.Before(cert.NotBefore) || !now.Before(cert.NotAfter):
		return nil, fmt.Errorf("ca: upstream certificate: not valid now (valid %s to %s)", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if err := checkPublicKey(cert.PublicKey); err != nil {
		return nil, fmt.Errorf("ca: upstream certificate: %w", err)
	}
	if len(chain) > 0 {
		roots := x509.NewCertPool()
		roots.AddCert(chain[len(chain)-1])
		inter := x509.NewCertPool()
		for _, x := range chain[:len(chain)-1] {
			inter.AddCert(x)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, fmt.Errorf("ca: upstream chain does not verify: %w", err)
		}
	}
	id, err := authorityID(cert)
	if err != nil {
		return nil, fmt.Errorf("ca: upstream key id: %w", err)
	}
	rec := store.Authority{
		ID:         id,
		CertDER:    cert.Raw,
		CreatedAt:  now.UTC().Truncate(time.Second),
		ActivateAt: now.UTC().Truncate(time.Second),
	}
	for _, x := range chain {
		rec.ChainDER = append(rec.ChainDER, x.Raw)
	}
	if err := c.seal(&rec, signer); err != nil {
		return nil, err
	}
	return c.assemble(rec, cert, chain, signer)
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPEMFileSize {
		return nil, fmt.Errorf("larger than %d bytes", maxPEMFileSize)
	}
	return b, nil
}

// parsePrivateKeyPEM reads the first private key block: PKCS #8, SEC 1 or
// PKCS #1. Errors never include key bytes.
func parsePrivateKeyPEM(b []byte) (any, error) {
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, errors.New("no private key block")
		}
		switch blk.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, errors.New("malformed PKCS #8 private key")
			}
			return k, nil
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(blk.Bytes)
			if err != nil {
				return nil, errors.New("malformed EC private key")
			}
			return k, nil
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
			if err != nil {
				return nil, errors.New("malformed RSA private key")
			}
			return k, nil
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("encrypted private keys are not supported")
		}
	}
}

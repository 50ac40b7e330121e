package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// pki holds the paths of the credentials generated for one run. Every key is ECDSA P-256
// (fast to generate; kube-apiserver accepts it for serving, client and service-account keys).
type pki struct {
	CACert         string // CA certificate, also the apiserver's --client-ca-file
	ServingCert    string // serving certificate for kube-apiserver and kube-controller-manager
	ServingKey     string
	SAPublicKey    string // --service-account-key-file
	SAPrivateKey   string // --service-account-signing-key-file
	AdminCert      string // client certificate CN=nodeproxy-admin, O=system:masters
	AdminKey       string
	AdminCertPEM   []byte
	AdminKeyPEM    []byte
	CACertPEM      []byte
	servingIPs     []net.IP
	servingDNSName []string
}

// certificateLifetime is long enough for any test run and short enough to be obviously test-only.
const certificateLifetime = 48 * time.Hour

// generatePKI writes a CA, a serving certificate valid for servingIPs and the in-cluster
// kubernetes names, a service-account key pair and an admin client certificate into dir.
func generatePKI(dir string, servingIPs []net.IP) (*pki, error) {
	p := &pki{
		CACert:       filepath.Join(dir, "ca.crt"),
		ServingCert:  filepath.Join(dir, "serving.crt"),
		ServingKey:   filepath.Join(dir, "serving.key"),
		SAPublicKey:  filepath.Join(dir, "sa.pub"),
		SAPrivateKey: filepath.Join(dir, "sa.key"),
		AdminCert:    filepath.Join(dir, "admin.crt"),
		AdminKey:     filepath.Join(dir, "admin.key"),
		servingIPs:   servingIPs,
		servingDNSName: []string{"localhost", "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}
	caKey, caCert, err := p.writeCA()
	if err != nil {
		return nil, err
	}
	if err := p.writeServing(caKey, caCert); err != nil {
		return nil, err
	}
	if err := p.writeAdmin(caKey, caCert); err != nil {
		return nil, err
	}
	if err := p.writeServiceAccountKeys(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *pki) writeCA() (crypto.Signer, *x509.Certificate, error) {
	template := certificateTemplate(pkix.Name{CommonName: "nodeproxy-e2e-ca"})
	template.IsCA = true
	template.BasicConstraintsValid = true
	template.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign
	key, certDER, err := signCertificate(template, nil, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the CA: %w", err)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing the CA certificate: %w", err)
	}
	p.CACertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	return key, cert, writeFile(p.CACert, p.CACertPEM)
}

func (p *pki) writeServing(caKey crypto.Signer, caCert *x509.Certificate) error {
	template := certificateTemplate(pkix.Name{CommonName: "kube-apiserver"})
	template.KeyUsage = x509.KeyUsageDigitalSignature
	template.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	template.IPAddresses = p.servingIPs
	template.DNSNames = p.servingDNSName
	key, certDER, err := signCertificate(template, caKey, caCert)
	if err != nil {
		return fmt.Errorf("creating the serving certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	if err := writeFile(p.ServingCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})); err != nil {
		return err
	}
	return writeFile(p.ServingKey, keyPEM)
}

func (p *pki) writeAdmin(caKey crypto.Signer, caCert *x509.Certificate) error {
	template := certificateTemplate(pkix.Name{CommonName: "nodeproxy-admin", Organization: []string{"system:masters"}})
	template.KeyUsage = x509.KeyUsageDigitalSignature
	template.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	key, certDER, err := signCertificate(template, caKey, caCert)
	if err != nil {
		return fmt.Errorf("creating the admin client certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	p.AdminCertPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	p.AdminKeyPEM = keyPEM
	if err := writeFile(p.AdminCert, p.AdminCertPEM); err != nil {
		return err
	}
	return writeFile(p.AdminKey, keyPEM)
}

func (p *pki) writeServiceAccountKeys() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating the service-account key: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding the service-account public key: %w", err)
	}
	if err := writeFile(p.SAPrivateKey, keyPEM); err != nil {
		return err
	}
	return writeFile(p.SAPublicKey, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))
}

// writeKubeconfig writes a kubeconfig for the admin certificate talking to server.
func (p *pki) writeKubeconfig(path, server string) error {
	config := clientcmdapi.NewConfig()
	config.Clusters["e2e"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: p.CACertPEM}
	config.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: p.AdminCertPEM, ClientKeyData: p.AdminKeyPEM}
	config.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "admin"}
	config.CurrentContext = "e2e"
	if err := clientcmd.WriteToFile(*config, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

func certificateTemplate(subject pkix.Name) *x509.Certificate {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		serial = big.NewInt(time.Now().UnixNano())
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certificateLifetime),
	}
}

// signCertificate makes a key for template and signs it with parentKey/parent, or self-signs
// it when parent is nil. It returns the new key and the DER certificate.
func signCertificate(template *x509.Certificate, parentKey crypto.Signer, parent *x509.Certificate) (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating a key: %w", err)
	}
	if parent == nil {
		parent, parentKey = template, key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, key.Public(), parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("signing the certificate: %w", err)
	}
	return key, der, nil
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding a private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func writeFile(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

//! Which names a peer certificate speaks for.

use rustls_pki_types::{CertificateDer, ServerName};

/// Whether `cert` (DER, already verified by the TLS handshake) names `node` as a DNS name in
/// its subjectAltName. The common name is not looked at: SANs are what X.509 name checks use
/// (RFC 6125), and a CN-only certificate names nothing here.
pub fn certificate_names(cert: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    match webpki::EndEntityCert::try_from(cert) {
        Ok(cert) => cert.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ca, leaf};
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn names_only_the_nodes_in_the_san() {
        let ca = ca("ca");
        let (pem, _) = leaf(&ca, &["node-a", "node-b.example"], true);
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert!(certificate_names(&der, "node-a"));
        assert!(certificate_names(&der, "node-b.example"));
        assert!(!certificate_names(&der, "node-c"));
        assert!(!certificate_names(&der, "node"));
        assert!(!certificate_names(&der, ""));
    }
}

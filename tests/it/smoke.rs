#[test]
fn ca_makes_certs() {
    let ca = crate::support::ca::TestCa::new();
    let c = ca.server_cert();
    let _ = c.server_config();
    assert!(ca.ca_pem.contains("BEGIN CERTIFICATE"));
}

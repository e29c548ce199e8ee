//! Access control of the status page on whatever a client sends: any `Authorization` and
//! `Cookie` header values and client-certificate CN. Never panics, and nothing but the
//! configured token (which the fuzzer does not know) gets in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::access::{
    Access, AccessSettings, Credentials, Permission, ServiceSet, Supervisor,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (authorization, cookie, cn) = (parts.next(), parts.next(), parts.next());
    let access = Access::new(AccessSettings {
        supervisors: vec![Supervisor {
            id: "alice".into(),
            // SHA-256 of a token the fuzzer would have to invert it to find.
            token_sha256: Some([0x5a; 32]),
            cert_cn: None,
            view: ServiceSet::All,
            listen: ServiceSet::All,
        }],
        monitorable: ["sales".to_owned()].into(),
        ..AccessSettings::default()
    });
    let creds = Credentials {
        authorization,
        cookie,
        client_cert_cn: cn,
    };
    assert!(access.authorize(&creds, Some("sales"), Permission::Listen).is_err());
    assert!(access.login(&creds).is_err());
    let _ = access.logout(&creds);
});

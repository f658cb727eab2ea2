//! `sluice encrypt show|rotate` (issue 15: "key rotation on request"): the node key lives in
//! `$SLUICE_STATE_DIR/wireguard.key`, mode 0600; `show` makes it on first use and then
//! prints the same public key; `rotate` replaces it and prints the new public key; neither
//! ever prints the private key. (The running daemon taking the rotated key is
//! `encrypt::follow_key_file`, exercised under traffic by `tests/encrypt_wireguard.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn sluice(state: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_STATE_DIR", state)
        .output()
        .expect("runs sluice");
    assert!(out.status.success(), "sluice {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

#[test]
fn show_then_rotate_prints_public_keys_only() {
    let state = std::env::temp_dir().join(format!("slcli-encrypt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let key_file = state.join("wireguard.key");
    let first = sluice(&state, &["encrypt", "show"]);
    assert_eq!(first.len(), 44, "a base64 public key: {first:?}");
    let private = std::fs::read_to_string(&key_file).expect("show made the key").trim().to_string();
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600, "root only");
    assert_eq!(sluice(&state, &["encrypt", "show"]), first, "show keeps the key");
    let rotated = sluice(&state, &["encrypt", "rotate"]);
    assert_eq!(rotated.len(), 44, "a base64 public key: {rotated:?}");
    assert_ne!(rotated, first, "rotate gives a new key");
    assert_eq!(sluice(&state, &["encrypt", "show"]), rotated, "and keeps it");
    let private_after = std::fs::read_to_string(&key_file).unwrap().trim().to_string();
    assert_ne!(private_after, private, "the key file changed");
    for (printed, secret) in [(&first, &private), (&rotated, &private_after)] {
        assert!(!printed.contains(secret.as_str()), "the private key is never printed");
    }
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600, "still root only");
    let _ = std::fs::remove_dir_all(&state);
}

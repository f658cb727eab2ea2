//! Object names.
//!
//! Contract: [`check_dns_label`] accepts exactly the Kubernetes DNS-1123 label spelling: 1 to 63
//! characters, lowercase ASCII letters, digits and '-', starting and ending with a letter or
//! digit. [`check_dns_subdomain`] accepts dot-separated labels of at most 253 characters in
//! all. Their error text says which rule the name breaks; they never panic.

/// The longest DNS-1123 label.
pub const MAX_NAME_LEN: usize = 63;

/// The longest DNS-1123 subdomain.
const MAX_SUBDOMAIN_LEN: usize = 253;

/// Checks that `name` is a DNS-1123 label.
pub(crate) fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "name is empty; a name is 1 to {MAX_NAME_LEN} lowercase letters, digits and '-'"
        ));
    }
    if let Some(bad) = name.chars().find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')) {
        return Err(format!(
            "`{name}` contains {bad:?}; a name holds only lowercase letters, digits and '-'"
        ));
    }
    // Only ASCII is left, so bytes are characters.
    if name.len() > MAX_NAME_LEN {
        return Err(format!("`{name}` is {} characters long; a name has at most {MAX_NAME_LEN}", name.len()));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "`{name}` starts or ends with '-'; a name starts and ends with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks that `name` is a DNS-1123 subdomain: dot-separated DNS labels, 1 to 253 characters
/// in all (the spelling of Kubernetes object names and label-key prefixes).
pub(crate) fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SUBDOMAIN_LEN {
        return Err(format!("`{name}` must be 1 to {MAX_SUBDOMAIN_LEN} characters"));
    }
    if name.split('.').any(|part| check_dns_label(part).is_err()) {
        return Err(format!(
            "`{name}` is not a DNS subdomain (dot-separated lowercase letters, digits and '-')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["node-1", "a", "0", "n0de-x-9", &"a".repeat(63)] {
            assert_eq!(check_dns_label(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", "name is empty; a name is 1 to 63 lowercase letters, digits and '-'"),
            ("Node-1", "`Node-1` contains 'N'; a name holds only lowercase letters, digits and '-'"),
            ("node_1", "`node_1` contains '_'; a name holds only lowercase letters, digits and '-'"),
            ("nöde", "`nöde` contains 'ö'; a name holds only lowercase letters, digits and '-'"),
            ("-node", "`-node` starts or ends with '-'; a name starts and ends with a letter or digit"),
            ("node-", "`node-` starts or ends with '-'; a name starts and ends with a letter or digit"),
        ];
        for (name, expected) in cases {
            assert_eq!(check_dns_label(name), Err(expected.to_owned()), "{name:?}");
        }
        let long = "a".repeat(64);
        assert_eq!(
            check_dns_label(&long),
            Err(format!("`{long}` is 64 characters long; a name has at most 63"))
        );
    }

    #[test]
    fn dns_subdomains() {
        for ok in ["a", "allow-dns.v2", "example.com", &"a".repeat(63)] {
            assert_eq!(check_dns_subdomain(ok), Ok(()), "{ok}");
        }
        for (name, expected) in [
            ("", "`` must be 1 to 253 characters"),
            ("a..b", "`a..b` is not a DNS subdomain (dot-separated lowercase letters, digits and '-')"),
            ("Allow", "`Allow` is not a DNS subdomain (dot-separated lowercase letters, digits and '-')"),
            ("a.-b", "`a.-b` is not a DNS subdomain (dot-separated lowercase letters, digits and '-')"),
        ] {
            assert_eq!(check_dns_subdomain(name), Err(expected.to_owned()), "{name:?}");
        }
    }
}

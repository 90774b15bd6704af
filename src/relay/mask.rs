//! Masked emails, the only form of an account's address that leaves the
//! relay: `lukas@wearable.com` is shown as `lu****@wear****.com`.

/// Masks an email: the first two characters of the local part (one if it is
/// short, none if it is one character), the first four of the domain before
/// its last label, and the last label itself.
pub fn email(address: &str) -> String {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return "****".into();
    };
    let local_len = local.chars().count();
    let keep = match local_len {
        0 | 1 => 0,
        2 => 1,
        _ => 2,
    };
    let local: String = local.chars().take(keep).collect();
    let (name, tld) = match domain.rsplit_once('.') {
        Some((name, tld)) if !name.is_empty() && !tld.is_empty() => (name, Some(tld)),
        _ => (domain, None),
    };
    let name: String = name.chars().take(4.min(name.chars().count().saturating_sub(1))).collect();
    match tld {
        Some(tld) => format!("{local}****@{name}****.{tld}"),
        None => format!("{local}****@{name}****"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_the_reference_product() {
        assert_eq!(email("lukas@wearable.com"), "lu****@wear****.com");
    }

    #[test]
    fn short_local_parts_reveal_little() {
        assert_eq!(email("a@example.com"), "****@exam****.com");
        assert_eq!(email("ab@example.com"), "a****@exam****.com");
    }

    #[test]
    fn subdomains_are_folded_into_the_mask() {
        assert_eq!(email("ops@mail.eu.example.org"), "op****@mail****.org");
        assert_eq!(email("ops@x.io"), "op****@****.io");
    }

    #[test]
    fn unicode_is_cut_on_characters() {
        assert_eq!(email("élodie@café.fr"), "él****@caf****.fr");
        assert_eq!(email("用户名@例子.中国"), "用户****@例****.中国");
    }

    #[test]
    fn odd_input_still_hides_the_address() {
        assert_eq!(email("no-at-sign"), "****");
        assert_eq!(email("x@localhost"), "****@loca****");
        // Neither the whole local part nor the whole domain name survives.
        for full in ["lukas@wearable.com", "ops@mail.eu.example.org", "ab@cd.ef", "x@y.z"] {
            let masked = email(full);
            let (local, domain) = full.split_once('@').unwrap();
            let name = domain.split('.').next().unwrap();
            assert!(!masked.starts_with(&format!("{local}*")), "{masked}");
            assert!(!masked.contains(&format!("@{name}.")), "{masked}");
        }
    }
}

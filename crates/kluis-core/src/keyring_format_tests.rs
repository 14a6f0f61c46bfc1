//! Keyring payload rules that need a body sealed by hand (docs/FORMAT.md §8.1, §8.4).

use super::*;

const RAW: [u8; KEY_LEN] = [0x77; KEY_LEN];

fn secret() -> KeyringSecret {
    KeyringSecret::RawKey(KeyMaterial::from_bytes(RAW))
}

/// A key-file keyring whose body holds `payload`, written as `to_file_bytes` writes one.
fn file_with_payload(payload: &[u8]) -> Vec<u8> {
    let salt = [0x5a; 16];
    let params = KdfParams { m_cost_kib: 0, t_cost: 0, p_cost: 0 };
    let kek = derive_kek(&secret(), &params, &salt).unwrap();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    header.extend_from_slice(&1u64.to_be_bytes());
    header.push(2);
    header.extend_from_slice(&[0u8; 12]);
    header.extend_from_slice(&salt);
    let body_len = u32::try_from(payload.len() + crate::seal::OVERHEAD).unwrap();
    header.extend_from_slice(&body_len.to_be_bytes());
    let mut ad = BODY_AD_LABEL.to_vec();
    ad.extend_from_slice(&header);
    let mut out = header;
    out.extend_from_slice(&kek.seal_ad(Suite::default(), &ad, payload).unwrap());
    let sum = sha256(&[&out]);
    out.extend_from_slice(&sum);
    out
}

fn payload(primary: u32, versions: &[u32]) -> Vec<u8> {
    let mut p = primary.to_be_bytes().to_vec();
    p.extend_from_slice(&u32::try_from(versions.len()).unwrap().to_be_bytes());
    for v in versions {
        p.extend_from_slice(&v.to_be_bytes());
        p.extend_from_slice(&1_763_900_000i64.to_be_bytes());
        p.extend_from_slice(&[u8::try_from(*v % 256).unwrap(); KEY_LEN]);
    }
    p
}

#[test]
fn a_hand_sealed_payload_opens() {
    let k = LocalKeyring::from_file_bytes(&file_with_payload(&payload(2, &[1, 2])), &secret()).unwrap();
    assert_eq!(k.primary().get(), 2);
    assert_eq!(k.versions().len(), 2);
}

#[test]
fn root_key_version_0_is_refused() {
    for (primary, versions) in [(0, &[0u32][..]), (1, &[1, 0]), (1, &[0, 1])] {
        let r = LocalKeyring::from_file_bytes(&file_with_payload(&payload(primary, versions)), &secret());
        assert!(matches!(r, Err(Error::KeyringCorrupt("root key version 0"))), "{versions:?}: {r:?}");
    }
    // A primary of 0 that is not listed is the missing primary.
    let r = LocalKeyring::from_file_bytes(&file_with_payload(&payload(0, &[1])), &secret());
    assert!(matches!(r, Err(Error::KeyringCorrupt("primary root key version missing"))), "{r:?}");
}

#[test]
fn payload_faults_in_the_order_of_the_table() {
    // Duplicate versions, then a payload cut short or followed by more bytes.
    let r = LocalKeyring::from_file_bytes(&file_with_payload(&payload(1, &[1, 1])), &secret());
    assert!(matches!(r, Err(Error::KeyringCorrupt("duplicate root key version"))), "{r:?}");
    let mut short = payload(1, &[1]);
    short.pop();
    let r = LocalKeyring::from_file_bytes(&file_with_payload(&short), &secret());
    assert!(matches!(r, Err(Error::Malformed { what: "keyring payload", .. })), "{r:?}");
    let mut long = payload(1, &[1]);
    long.push(0);
    let r = LocalKeyring::from_file_bytes(&file_with_payload(&long), &secret());
    assert!(matches!(r, Err(Error::Malformed { what: "keyring payload", .. })), "{r:?}");
}

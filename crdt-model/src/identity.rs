//! A person's key and this device's key.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::ids::{DeviceId, PersonId};
use crate::signed::{DeviceCert, Signed};

/// Who this node acts as: a person's key (certifies devices) and this device's key (signs
/// content). Both are ed25519; the device key will also be the iroh endpoint key.
#[derive(Clone)]
pub struct Identity {
    /// The person's secret key.
    pub person: SigningKey,
    /// This device's secret key.
    pub device: SigningKey,
    /// The display name chosen at `init`.
    pub name: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("person", &self.person_id())
            .field("device", &self.device_id())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn device_of_message(person: &PersonId) -> Vec<u8> {
    let mut m = b"flyt/v1/device-of".to_vec();
    m.extend_from_slice(&person.0);
    m
}

impl Identity {
    /// Builds an identity from two 32-byte secrets (drawn by the caller).
    pub fn from_secrets(person: [u8; 32], device: [u8; 32], name: impl Into<String>) -> Self {
        Identity {
            person: SigningKey::from_bytes(&person),
            device: SigningKey::from_bytes(&device),
            name: name.into(),
        }
    }

    /// The person's public id.
    pub fn person_id(&self) -> PersonId {
        PersonId(self.person.verifying_key().to_bytes())
    }

    /// This device's public id.
    pub fn device_id(&self) -> DeviceId {
        DeviceId(self.device.verifying_key().to_bytes())
    }

    /// The certificate binding this device to the person, signed both ways.
    pub fn device_cert(&self, label: &str, at_ms: i64) -> Signed<DeviceCert> {
        let device_sig = device_sig(&self.device.to_bytes(), &self.person_id());
        self.certify(self.device_id(), device_sig, label, at_ms)
    }

    /// Certifies another device of this person, given that device's own signature over the
    /// person key ([`device_sig`]). Check the result with [`device_cert_valid`].
    pub fn certify(
        &self,
        device: DeviceId,
        device_sig: Vec<u8>,
        label: &str,
        at_ms: i64,
    ) -> Signed<DeviceCert> {
        Signed::sign(
            &self.person,
            DeviceCert {
                device,
                device_sig,
                label: label.to_owned(),
                at_ms,
            },
        )
    }
}

/// A device's signature saying "I am a device of `person`", the half of a [`DeviceCert`] the
/// device itself contributes.
pub fn device_sig(device_secret: &[u8; 32], person: &PersonId) -> Vec<u8> {
    SigningKey::from_bytes(device_secret)
        .sign(&device_of_message(person))
        .to_bytes()
        .to_vec()
}

/// Checks that a device certificate's device really signed over the certifying person.
pub fn device_cert_valid(cert: &Signed<DeviceCert>) -> bool {
    let Ok(sig) = <[u8; 64]>::try_from(cert.payload.device_sig.as_slice()) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&cert.payload.device.0) else {
        return false;
    };
    key.verify_strict(
        &device_of_message(&PersonId(cert.signer)),
        &Signature::from_bytes(&sig),
    )
    .is_ok()
}

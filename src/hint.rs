//! One trait for "what the user can do about it": every layer's error implements it, and
//! every conversion into a phase's [`crate::phases::StepError`] (and from there into the
//! command's error) goes through it, so no hint is dropped on the way.

/// An error that may know what the user can do about it.
pub trait Hint {
    /// The hint, when there is something the user can do.
    fn hint(&self) -> Option<String>;

    /// Whether the error means "interrupted by the user" (Ctrl-C), not a failure.
    fn interrupted(&self) -> bool {
        false
    }
}

impl Hint for crate::host::HostError {
    fn hint(&self) -> Option<String> {
        crate::host::HostError::hint(self)
    }
    fn interrupted(&self) -> bool {
        matches!(self, crate::host::HostError::Cancelled { .. })
    }
}

impl Hint for crate::assets::AssetError {
    fn hint(&self) -> Option<String> {
        crate::assets::AssetError::hint(self)
    }
}

impl Hint for crate::k3s::K3sError {
    fn hint(&self) -> Option<String> {
        crate::k3s::K3sError::hint(self)
    }
}

impl Hint for crate::k3s::token::TokenError {
    fn hint(&self) -> Option<String> {
        crate::k3s::token::TokenError::hint(self)
    }
}

impl Hint for crate::app::AppError {
    fn hint(&self) -> Option<String> {
        crate::app::AppError::hint(self)
    }
}

impl Hint for crate::kube::KubeError {
    fn hint(&self) -> Option<String> {
        None
    }
}

impl Hint for crate::kube::wait::WaitTimeout {
    fn hint(&self) -> Option<String> {
        None
    }
}

impl Hint for crate::k3s::skew::Refusal {
    fn hint(&self) -> Option<String> {
        crate::k3s::skew::Refusal::hint(self)
    }
}

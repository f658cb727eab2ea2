//! Network interfaces as the attach layer names them: an ifindex, and the name it was
//! looked up by when there was one (for error messages and `sluice status`).

use super::{AttachError, Result};
use std::ffi::CString;
use std::fmt;

/// A network device of one network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Interface {
    index: u32,
    name: Option<String>,
}

impl Interface {
    /// The device called `name` in the calling thread's network namespace.
    pub fn lookup(name: &str) -> Result<Interface> {
        let fail = |source| AttachError::Interface { name: name.to_string(), source };
        let cname = CString::new(name).map_err(|_| {
            fail(std::io::Error::new(std::io::ErrorKind::InvalidInput, "contains a NUL byte"))
        })?;
        // SAFETY: `cname` is a NUL-terminated string alive across the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            let err = std::io::Error::last_os_error();
            let err = if err.raw_os_error() == Some(libc::ENODEV) {
                std::io::Error::new(err.kind(), "no such device in this network namespace")
            } else {
                err
            };
            return Err(fail(err));
        }
        Ok(Interface { index, name: Some(name.to_string()) })
    }

    /// A device known only by its index (its name unknown or not to be trusted, as for a
    /// device of another namespace).
    pub fn from_index(index: u32) -> Interface {
        Interface { index, name: None }
    }

    /// A device whose index and name the caller already knows.
    pub fn named(index: u32, name: impl Into<String>) -> Interface {
        Interface { index, name: Some(name.into()) }
    }

    /// The ifindex.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The name, when known.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl From<u32> for Interface {
    fn from(index: u32) -> Self {
        Interface::from_index(index)
    }
}

/// `lxc1 (ifindex 5)`, or `ifindex 5` without a name.
impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} (ifindex {})", self.index),
            None => write!(f, "ifindex {}", self.index),
        }
    }
}

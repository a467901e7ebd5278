//! The thin edge that runs `nft`: a script in on standard input, success or `nft`'s own words
//! out.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Time `nft` may take to apply one script.
const NFT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why `nft` did not apply a script.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// There is no `nft` to run.
    #[error("the nft command is missing: install nftables (apt-get install nftables), or run the agent with --no-isolation to go without network isolation")]
    Missing,
    /// It could not be started or fed.
    #[error("running nft: {0}")]
    Io(std::io::Error),
    /// It refused the script (or the kernel did).
    #[error("nft refused the rules ({status}): {stderr}")]
    Refused {
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// It did not finish in time.
    #[error("nft did not finish within {NFT_TIMEOUT:?}")]
    Timeout,
}

/// Applies `script` with `nft -f -` (one atomic transaction).
pub async fn apply(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NftError::Missing,
            _ => NftError::Io(e),
        })?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| NftError::Io(std::io::Error::other("nft's standard input is not a pipe")))?;
    let run = async {
        stdin.write_all(script.as_bytes()).await?;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(NFT_TIMEOUT, run)
        .await
        .map_err(|_| NftError::Timeout)?
        .map_err(NftError::Io)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

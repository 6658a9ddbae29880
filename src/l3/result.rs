//! Building a main plugin's result: IPAM through the delegate, masquerade of its
//! addresses, and the `dns` override.

use super::Rollback;
use crate::cni::{CniResult, IpConfig};
use anyhow::{bail, Result};
use ipnet::IpNet;

/// IPAM ADD through the delegate; a result without addresses is an error.
pub fn ipam_add(ctx: &crate::cni::Ctx) -> Result<CniResult> {
    let r = crate::cni::delegate::add(ctx, ctx.conf.ipam_type())?;
    if r.ips.is_empty() {
        bail!("IPAM plugin returned missing IP config");
    }
    Ok(r)
}

/// Masquerade traffic from the result's addresses (`ipMasq`), and register the
/// teardown with `undo` so a later failure of the ADD removes the rules again.
pub fn masquerade<'a>(
    ctx: &'a crate::cni::Ctx,
    backend: crate::fw::ipmasq::Backend,
    ips: &[IpConfig],
    undo: &mut Rollback<'a>,
) -> Result<()> {
    use crate::fw::ipmasq;
    let nets: Vec<IpNet> = ips.iter().map(|i| i.address).collect();
    ipmasq::setup(
        backend,
        &nets,
        &ctx.conf.name,
        &ctx.ifname,
        &ctx.container_id,
    )?;
    undo.push("remove ip masquerade", move || {
        ipmasq::teardown(&ctx.conf.name, &ctx.ifname, &ctx.container_id)
    });
    Ok(())
}

/// The plugin-level `dns` replaces IPAM's when any of its keys is present, even as an
/// empty list (the reference's rule).
pub fn apply_dns_override(dns: Option<&serde_json::Value>, res: &mut CniResult) -> Result<()> {
    let Some(serde_json::Value::Object(o)) = dns else {
        return Ok(());
    };
    let keys = ["nameservers", "domain", "search", "options"];
    if o.iter()
        .any(|(k, v)| !v.is_null() && keys.iter().any(|x| x.eq_ignore_ascii_case(k)))
    {
        res.dns =
            crate::cni::decode::from_value(serde_json::Value::Object(o.clone())).map_err(|e| {
                crate::error::cni_err(crate::error::Code::Decode, format!("invalid dns: {e}"))
            })?;
    }
    Ok(())
}

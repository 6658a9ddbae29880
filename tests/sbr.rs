//! sbr through the built binary (§2.16, §4.16 of the reference notes): rules and routes
//! read back with `ip -j`, compared with the Go plugin v1.9.1 (same rules, same tables,
//! same routes), cross-DEL both ways, DEL without a netns, and malformed inputs.

mod common;

use common::*;
use serde_json::{json, Value};

/// `eth0` in the container (veth to the host) with 10.78.0.2/24 and fd78::2/64, plus a
/// route of its own, and a second interface `eth1` that sbr must leave alone.
fn setup(rig: &Rig) {
    rig.host.ip(&[
        "link",
        "add",
        "name",
        "hv0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &rig.cont.name,
    ]);
    rig.host.ip(&[
        "link",
        "add",
        "name",
        "hv1",
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "netns",
        &rig.cont.name,
    ]);
    for dev in ["eth0", "eth1"] {
        rig.cont.ip(&["link", "set", dev, "up"]);
    }
    rig.cont.ip(&["addr", "add", "10.78.0.2/24", "dev", "eth0"]);
    rig.cont
        .ip(&["addr", "add", "fd78::2/64", "dev", "eth0", "nodad"]);
    rig.cont.ip(&["addr", "add", "10.79.0.2/24", "dev", "eth1"]);
    rig.cont.ip(&[
        "route",
        "add",
        "10.200.0.0/16",
        "via",
        "10.78.0.1",
        "dev",
        "eth0",
    ]);
    rig.cont
        .ip(&["route", "add", "default", "via", "10.79.0.1"]);
}

fn conf(rig: &Rig, extra: Value) -> Value {
    merged(
        json!({"cniVersion": "1.0.0", "name": "sbrnet", "type": "sbr",
            "prevResult": {"cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": rig.cont.path}],
                "ips": [{"address": "10.78.0.2/24", "gateway": "10.78.0.1", "interface": 0},
                        {"address": "fd78::2/64", "interface": 0}]}}),
        &extra,
    )
}

/// Rules and every route of every table, both families, as `ip -j` prints them (the
/// kernel's local table and link-local multicast routes excluded).
fn state(ns: &Netns) -> Value {
    let mut rules = ns.ip_json(&["rule", "show"]);
    rules = Value::Array(rules.as_array().unwrap().clone());
    let mut v6 = ns.ip_json(&["-6", "rule", "show"]);
    v6 = Value::Array(v6.as_array().unwrap().clone());
    let routes = |fam: &str| -> Vec<Value> {
        ns.ip_json(&[fam, "route", "show", "table", "all"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["table"] != "local")
            .cloned()
            .collect()
    };
    json!({"rules4": rules, "rules6": v6, "routes4": routes("-4"), "routes6": routes("-6")})
}

#[test]
fn add_moves_routes_into_a_table_and_del_removes_the_rules() {
    let rig = Rig::new();
    setup(&rig);
    let c = conf(&rig, json!({}));
    let before = state(&rig.cont);
    let r = rig.call("sbr", "ADD", &c).run().ok().clone();
    assert_eq!(
        r["ips"], c["prevResult"]["ips"],
        "prevResult passes through"
    );
    let s = state(&rig.cont);
    let rules = s["rules4"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["src"] == "10.78.0.2" && r["table"] == "100"),
        "{rules:?}"
    );
    let r6 = s["rules6"].as_array().unwrap();
    assert!(
        r6.iter()
            .any(|r| r["src"] == "fd78::2" && r["table"] == "101"),
        "{r6:?}"
    );
    let t100: Vec<&Value> = s["routes4"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["table"] == "100")
        .collect();
    let dsts: Vec<&str> = t100.iter().map(|r| r["dst"].as_str().unwrap()).collect();
    assert!(
        dsts.contains(&"default")
            && dsts.contains(&"10.78.0.0/24")
            && dsts.contains(&"10.200.0.0/16"),
        "{t100:?}"
    );
    // eth0's main-table routes are gone, eth1's stay
    let main: Vec<&Value> = s["routes4"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("table").is_none())
        .collect();
    assert!(main.iter().all(|r| r["dev"] == "eth1"), "{main:?}");
    rig.call("sbr", "CHECK", &with_prev(&c, &r)).run().ok();

    rig.call("sbr", "DEL", &c).run().ok();
    let after = state(&rig.cont);
    assert_eq!(after["rules4"], before["rules4"]);
    assert_eq!(after["rules6"], before["rules6"]);
    rig.call("sbr", "CHECK", &with_prev(&c, &r))
        .run()
        .fails_with(999, "no source rule for 10.78.0.2/32");
    rig.call("sbr", "DEL", &c).run().ok();
}

#[test]
fn a_configured_table_gets_rules_only() {
    let rig = Rig::new();
    setup(&rig);
    let before = state(&rig.cont);
    let c = conf(&rig, json!({"table": 5000}));
    rig.call("sbr", "ADD", &c).run().ok();
    let s = state(&rig.cont);
    assert_eq!(s["routes4"], before["routes4"]);
    assert!(s["rules4"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["src"] == "10.78.0.2" && r["table"] == "5000"));
    rig.call("sbr", "DEL", &c).run().ok();
    assert_eq!(state(&rig.cont), before);
}

/// DEL with the netns gone succeeds and creates nothing at the netns path (the
/// reference fails and leaves an empty file there).
#[test]
fn del_without_a_netns() {
    let rig = Rig::new();
    let path = rig.dir.join("gone-netns");
    let c = conf(&rig, json!({}));
    rig.call("sbr", "DEL", &c)
        .netns(path.to_str().unwrap())
        .run()
        .ok();
    assert!(!path.exists());
    rig.call("sbr", "DEL", &c).netns("").run().ok();
}

/// Same rules and routes as the Go plugin v1.9.1 on the same setup; each side's DEL
/// removes the other's rules.
#[test]
fn differential_against_v1_9_1() {
    for extra in [json!({}), json!({"table": 5000})] {
        let go = Rig::new();
        let ours = Rig::new();
        setup(&go);
        setup(&ours);
        let cg = conf(&go, extra.clone());
        let co = conf(&ours, extra.clone());
        let before = state(&ours.cont);
        go.call("sbr", "ADD", &cg).go().run().ok();
        ours.call("sbr", "ADD", &co).run().ok();
        assert_eq!(state(&go.cont), state(&ours.cont), "{extra}");
        go.call("sbr", "DEL", &cg).run().ok();
        ours.call("sbr", "DEL", &co).go().run().ok();
        for rig in [&go, &ours] {
            let s = state(&rig.cont);
            assert_eq!(s["rules4"], before["rules4"], "{extra}");
            assert_eq!(s["rules6"], before["rules6"], "{extra}");
        }
    }
}

/// Tables already in use in the container: a foreign route in table 100 (no rule
/// points there) and a foreign rule to table 101.
fn occupy_tables(rig: &Rig) {
    rig.cont
        .ip(&["route", "add", "192.0.2.0/24", "dev", "lo", "table", "100"]);
    rig.cont
        .ip(&["rule", "add", "from", "192.0.2.1", "table", "101"]);
}

/// The rules of a [`state`] (both families) whose table is `t`, as (src, srclen).
fn rules_to(s: &Value, t: &str) -> Vec<Value> {
    ["rules4", "rules6"]
        .iter()
        .flat_map(|k| s[k].as_array().unwrap().clone())
        .filter(|r| r["table"] == t)
        .map(|r| json!([r["src"], r["srclen"]]))
        .collect()
}

/// The routes of a [`state`] in table `t` (both families), as (dst, gateway, dev).
fn routes_in(s: &Value, t: &str) -> Vec<Value> {
    let mut v: Vec<Value> = ["routes4", "routes6"]
        .iter()
        .flat_map(|k| s[k].as_array().unwrap().clone())
        .filter(|r| r["table"] == t)
        .map(|r| json!([r["dst"], r["gateway"], r["dev"]]))
        .collect();
    v.sort_by_key(|r| r.to_string());
    v
}

/// The table id walk with tables already in use: table 100 holds a foreign route and
/// table 101 is a foreign rule's. cnibox skips both (the IPv4 address takes 102, the
/// IPv6 one 103). v1.9.1's getNextTableID means to skip a table with routes too, but
/// lists routes with `RouteList(nil, FAMILY_ALL)`, which the netlink library restricts to
/// the main table, so the Go plugin puts the IPv4 rule's routes into 100 beside the
/// foreign route (shown below) and the IPv6 rule into 102. DEL removes sbr's rules only:
/// the foreign rule and the foreign route stay.
#[test]
fn table_ids_in_use_by_a_rule_or_a_route_are_skipped() {
    let ours = Rig::new();
    let go = Rig::new();
    for rig in [&ours, &go] {
        setup(rig);
        occupy_tables(rig);
    }
    let before = state(&ours.cont);
    let foreign_route = json!(["192.0.2.0/24", null, "lo"]);
    assert_eq!(routes_in(&before, "100"), vec![foreign_route.clone()]);
    assert_eq!(rules_to(&before, "101"), vec![json!(["192.0.2.1", null])]);
    assert_eq!(rules_to(&before, "100"), Vec::<Value>::new());

    let v4_routes = |t: &str, s: &Value| {
        let mut want = vec![
            json!(["10.200.0.0/16", "10.78.0.1", "eth0"]),
            json!(["10.78.0.0/24", null, "eth0"]),
            json!(["default", "10.78.0.1", "eth0"]),
            // a route with neither src nor gateway is copied into each IP's table
            json!(["fd78::/64", null, "eth0"]),
        ];
        if t == "100" {
            want.insert(2, foreign_route.clone());
        }
        assert_eq!(routes_in(s, t), want, "routes of table {t}");
    };

    let c = conf(&ours, json!({}));
    ours.call("sbr", "ADD", &c).run().ok();
    let s = state(&ours.cont);
    assert_eq!(
        routes_in(&s, "100"),
        vec![foreign_route.clone()],
        "100 untouched"
    );
    assert_eq!(rules_to(&s, "100"), Vec::<Value>::new());
    assert_eq!(
        rules_to(&s, "101"),
        vec![json!(["192.0.2.1", null])],
        "101 is the foreign rule's alone"
    );
    assert_eq!(routes_in(&s, "101"), Vec::<Value>::new());
    assert_eq!(rules_to(&s, "102"), vec![json!(["10.78.0.2", null])]);
    v4_routes("102", &s);
    assert_eq!(rules_to(&s, "103"), vec![json!(["fd78::2", null])]);
    assert_eq!(
        routes_in(&s, "103"),
        vec![json!(["fd78::/64", null, "eth0"])]
    );

    // The reference, on the same setup: the IPv4 rule's routes land beside the foreign one.
    let cg = conf(&go, json!({}));
    go.call("sbr", "ADD", &cg).go().run().ok();
    let g = state(&go.cont);
    assert_eq!(rules_to(&g, "100"), vec![json!(["10.78.0.2", null])]);
    v4_routes("100", &g);
    assert_eq!(rules_to(&g, "102"), vec![json!(["fd78::2", null])]);

    ours.call("sbr", "DEL", &c).run().ok();
    let after = state(&ours.cont);
    assert_eq!(after["rules4"], before["rules4"]);
    assert_eq!(after["rules6"], before["rules6"]);
    assert_eq!(routes_in(&after, "100"), vec![foreign_route]);
}

/// Every case of the table fails with its code and changes nothing (the FIB rules are
/// part of the snapshot), and none creates the missing netns path (the runner checks).
#[test]
fn malformed_inputs_get_the_right_code_and_change_nothing() {
    let rig = Rig::new();
    setup(&rig);
    let table = include_str!("../testdata/malformed-sbr.json");
    Malformed::new("sbr", table, 10, conf(&rig, json!({}))).run(&rig);
}

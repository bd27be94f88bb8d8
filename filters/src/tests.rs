//! Table tests ported from containerd's `pkg/filters/filter_test.go`, plus a few more.

use std::collections::BTreeMap;

use super::*;

struct Entry {
    name: &'static str,
    other: &'static str,
    labels: BTreeMap<String, String>,
}

fn entry(name: &'static str, other: &'static str, labels: &[(&str, &str)]) -> Entry {
    Entry {
        name,
        other,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

impl Adaptor for Entry {
    fn field(&self, path: &[String]) -> Option<String> {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        match path.first().map(String::as_str) {
            Some("name") => nonempty(self.name),
            Some("other") => nonempty(self.other),
            Some("labels") => self.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

fn corpus() -> Vec<Entry> {
    vec![
        entry("foo", "", &[("foo", "true")]),
        entry("bar", "", &[]),
        entry(
            "foo",
            "",
            &[("foo", "present"), ("more complex label", "present")],
        ),
        entry("bar", "", &[("bar", "true")]),
        entry(
            "fooer",
            "",
            &[("more complex label with \\ and \"", "present")],
        ),
        entry(
            "fooer",
            "",
            &[("more complex label with \\ and \".post", "present")],
        ),
        entry("baz", "too complex, yo", &[]),
        entry("bazo", "abc", &[]),
        entry("compound", "", &[("foo", "omg_asdf.asdf-qwer")]),
    ]
}

/// `Ok(indices)` = the corpus entries that must match; `Err(msg)` = the exact error.
fn check(input: &str, expected: Result<&[usize], &str>) {
    let corpus = corpus();
    match (parse(input), expected) {
        (Ok(f), Ok(want)) => {
            let got: Vec<usize> = corpus
                .iter()
                .enumerate()
                .filter(|(_, e)| f.matches(*e))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(got, want, "input {input:?}");
        }
        (Err(e), Err(want)) => assert_eq!(e.to_string(), want, "input {input:?}"),
        (Ok(_), Err(want)) => panic!("input {input:?}: parsed, wanted error {want:?}"),
        (Err(e), Ok(_)) => panic!("input {input:?}: unexpected error {e}"),
    }
}

#[test]
fn containerd_table() {
    let all: Vec<usize> = (0..9).collect();
    let cases: &[(&str, Result<&[usize], &str>)] = &[
        ("", Ok(&all)),
        ("name", Ok(&all)),
        ("labels.foo", Ok(&[0, 2, 8])),
        ("labels.foo,name", Ok(&[0, 2, 8])),
        ("labels.foo==true", Ok(&[0])),
        ("labels.foo==omg_asdf.asdf-qwer", Ok(&[8])),
        (
            "labels.|foo|==omg_asdf.asdf-qwer",
            Err("filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered"),
        ),
        ("name==bar", Ok(&[1, 3])),
        ("name!=bar", Ok(&[0, 2, 4, 5, 6, 7, 8])),
        ("name==bar,labels.bar", Ok(&[3])),
        ("other==\"too complex, yo\"", Ok(&[6])),
        ("other~=[abc]+,name!=foo", Ok(&[6, 7])),
        ("other~=/[abc]+/,name!=foo", Ok(&[6, 7])),
        ("other~=/[abc]{1,2}/,name!=foo", Ok(&[6, 7])),
        ("other~=/[abc]{0,1}\"\\//,name!=foo", Ok(&[])),
        ("name==bar,labels.bar==true", Ok(&[3])),
        ("name==bar,labels.bar==wrong", Ok(&[])),
        (r#"name==foo,labels."more complex label""#, Ok(&[2])),
        (r#"labels."more complex label with \\ and \""==present"#, Ok(&[4])),
        (r#"labels."more complex label with \\ and \"".post==present"#, Ok(&[5])),
        (
            r#"labels.?"more complex label with \\ and \"".post==present"#,
            Err(r#"filters: parse error: [labels. >|?|< "more complex label with \\ and \"".post==present]: expected field or quoted"#),
        ),
        ("name==foo,", Err("filters: parse error: [name==foo,]: expected field or quoted")),
        ("labels.", Err("filters: parse error: [labels.]: expected field or quoted")),
        (
            "image~=,id?=?fbaq",
            Err("filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted"),
        ),
        (
            "labels.ns/key==value",
            Err("filters: parse error: [labels.ns >|/|< key==value]: quoted literal not terminated"),
        ),
        (
            "labels.key==/value",
            Err("filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated"),
        ),
    ];
    for (input, expected) in cases {
        check(input, *expected);
    }
}

#[test]
fn more_cases() {
    let cases: &[(&str, Result<&[usize], &str>)] = &[
        // whitespace around tokens
        ("name == bar", Ok(&[1, 3])),
        // value with punctuation and a colon (digests)
        ("other~=^ab", Ok(&[7])),
        // dotted label through a quoted component
        (r#"labels."foo"==true"#, Ok(&[0])),
        // escaped unicode in a quoted value
        (r#"name=="\u0066oo""#, Ok(&[0, 2])),
        // alternative quotes are for regexps only
        (
            "name==|bar|",
            Err("filters: parse error: [name== >|||< bar|]: invalid quote encountered"),
        ),
        (
            "name=bar",
            Err("filters: parse error: [name >|=|< bar]: unsupported operator \"=\""),
        ),
        (
            "name >",
            Err(r#"filters: parse error: [name  >|>|< ]: expected an operator ("=="|"!="|"~=")"#),
        ),
        (
            "name==\"bar",
            Err("filters: parse error: [name== >|\"|< bar]: quoted literal not terminated"),
        ),
        ("name~=(", Err("")),
    ];
    for (input, expected) in cases {
        if *expected == Err("") {
            let e = parse(input).expect_err("bad regexp must not parse");
            assert!(e.msg.contains("invalid regular expression"), "{e}");
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            continue;
        }
        check(input, *expected);
    }
}

#[test]
fn parse_all_is_or() {
    let corpus = corpus();
    let f = parse_all(&["name==bar", "labels.foo==true"]).unwrap();
    let got: Vec<usize> = corpus
        .iter()
        .enumerate()
        .filter(|(_, e)| f.matches(*e))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(got, vec![0, 1, 3]);
    assert!(parse_all::<&str>(&[]).unwrap().is_always());
    assert!(parse_all(&["", "name==x"]).unwrap().is_always());
    assert!(parse_all(&["name==x", "name=="]).is_err());
}

#[test]
fn closure_adaptor_and_operator_strings() {
    let f = parse("topic~=|^/tasks/|,namespace==default").unwrap();
    let ev = |p: &[String]| match p.first().map(String::as_str) {
        Some("topic") => Some("/tasks/exit".to_string()),
        Some("namespace") => Some("default".to_string()),
        _ => None,
    };
    assert!(f.matches(&ev));
    assert_eq!(Operator::Present.to_string(), "?");
    assert_eq!(Operator::Equal.to_string(), "==");
    assert_eq!(Operator::NotEqual.to_string(), "!=");
    assert_eq!(Operator::Matches.to_string(), "~=");
}

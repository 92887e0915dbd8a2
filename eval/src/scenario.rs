//! Scenario sequences (`api_abuse_scenarios.jsonl`: records with a `steps` array), replayed step
//! by step through every detector the way the agent runs them: the injection detectors on each
//! request, the behavioural detectors on each step as an exchange, with their state carried from
//! one step to the next and started afresh for each scenario.

use crate::record::Record;
use palisade_node_agent::detect::behaviour::{Behaviour, ExchangeView};
use palisade_node_agent::detect::{CompiledRule, Inputs, RequestView, INJECTION_DETECTORS};
use palisade_node_agent::http::HeaderFields;
use palisade_node_agent::template::template_path;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The client address of every step (TEST-NET-3): one client per scenario.
pub const SOURCE: &str = "203.0.113.7";
/// The capture clock moves this much from one step to the next.
pub const STEP_NS: u64 = 1_000_000_000;

pub struct Scenario {
    pub id: String,
    /// `owasp_api`, e.g. "API1 BOLA".
    pub owasp: String,
    pub steps: Vec<Step>,
}

pub struct Step {
    pub request: Record,
    /// `label` is "attack" (else "benign").
    pub attack: bool,
    /// `category` of the step: the attack's kind, or "benign".
    pub category: String,
    /// The response's status; 0 when the step has no response (as the agent says "unknown").
    pub status: u16,
    pub response_body: Option<Vec<u8>>,
    /// `response_category`: what the response is (e.g. `pii_exposure`), whatever the request.
    pub response_category: Option<String>,
}

impl Scenario {
    /// Whether a corpus line's JSON is a scenario rather than a single record.
    pub fn is_scenario(v: &Value) -> bool {
        v.get("steps").is_some()
    }

    pub fn from_json(v: &Value) -> Result<Scenario, String> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let id = text("id");
        let steps = v
            .get("steps")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("scenario {id}: steps is not an array"))?
            .iter()
            .enumerate()
            .map(|(i, step)| {
                Step::from_json(step, &text("source"), &format!("{id}#{}", i + 1))
                    .map_err(|e| format!("scenario {id}, step {}: {e}", i + 1))
            })
            .collect::<Result<_, _>>()?;
        Ok(Scenario {
            owasp: text("owasp_api"),
            id,
            steps,
        })
    }
}

impl Step {
    fn from_json(step: &Value, source: &str, id: &str) -> Result<Step, String> {
        let mut request = Record::from_json(step, &step.to_string())?;
        request.id = id.to_string();
        request.source = source.to_string();
        let attack = match step.get("label").and_then(Value::as_str) {
            Some("attack") => true,
            Some("benign") => false,
            other => return Err(format!("label must be \"attack\" or \"benign\", not {other:?}")),
        };
        let response = step.get("response").filter(|r| !r.is_null());
        Ok(Step {
            attack,
            category: request.category.clone(),
            status: response
                .and_then(|r| r.get("status"))
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(0),
            response_body: response
                .and_then(|r| r.get("body"))
                .and_then(Value::as_str)
                .map(|b| b.as_bytes().to_vec()),
            response_category: step
                .get("response_category")
                .and_then(Value::as_str)
                .map(str::to_string),
            request,
        })
    }
}

/// What the detectors said about one step: (detector, evidence) per rule that fired.
pub struct StepResult {
    pub attack: bool,
    pub category: String,
    pub response_category: Option<String>,
    pub fired: Vec<(String, String)>,
}

impl StepResult {
    /// Neither an attack nor a response that is one.
    fn is_benign(&self) -> bool {
        !self.attack && self.response_category.is_none()
    }
}

pub struct Replayed {
    pub id: String,
    pub owasp: String,
    pub steps: Vec<StepResult>,
}

/// Every detector with its default parameters and empty state: the injection detectors
/// and the behavioural ones (`shadowEndpoint` needs an OpenAPI document, which scenarios lack).
fn fresh_detectors() -> Result<Vec<CompiledRule>, String> {
    INJECTION_DETECTORS
        .iter()
        .chain(Behaviour::NAMES)
        .map(|d| CompiledRule::builtin(d, &[]))
        .collect()
}

/// Replays a scenario's steps in order, step i at i seconds, all from [`SOURCE`].
pub fn replay(scenario: &Scenario) -> Result<Replayed, String> {
    let mut rules = fresh_detectors()?;
    let mut steps = Vec::with_capacity(scenario.steps.len());
    for (i, step) in scenario.steps.iter().enumerate() {
        let r = &step.request;
        let template = template_path(&r.target);
        let headers: HeaderFields = r.headers.iter().map(|(k, v)| (k, v)).collect();
        let exchange = ExchangeView {
            request: RequestView {
                method: &r.method,
                target: &r.target,
                headers: &headers,
                body: r.body.as_deref(),
            },
            source: SOURCE,
            template: &template,
            status: step.status,
            response_body: step.response_body.as_deref(),
            now_ns: i as u64 * STEP_NS,
        };
        let inputs = Inputs::collect(&exchange.request);
        let mut fired = Vec::new();
        for rule in &mut rules {
            let found = if rule.is_behavioural() {
                rule.evaluate_exchange(&exchange, None)
            } else {
                rule.evaluate_with(&exchange.request, &inputs)
            };
            if let Some(d) = found {
                fired.push((rule.detector.clone(), d.evidence));
            }
        }
        steps.push(StepResult {
            attack: step.attack,
            category: step.category.clone(),
            response_category: step.response_category.clone(),
            fired,
        });
    }
    Ok(Replayed {
        id: scenario.id.clone(),
        owasp: scenario.owasp.clone(),
        steps,
    })
}

/// Steps flagged and by which rules (each rule counted once per step).
#[derive(Default)]
struct Tally {
    n: usize,
    flagged: usize,
    by_rule: BTreeMap<String, usize>,
}

impl Tally {
    fn add(&mut self, step: &StepResult) {
        self.n += 1;
        if !step.fired.is_empty() {
            self.flagged += 1;
        }
        let rules: BTreeSet<&str> = step.fired.iter().map(|(d, _)| d.as_str()).collect();
        for rule in rules {
            *self.by_rule.entry(rule.to_string()).or_default() += 1;
        }
    }

    fn rules(&self) -> String {
        if self.by_rule.is_empty() {
            return "–".into();
        }
        let list: Vec<String> = self.by_rule.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
        list.join(", ")
    }

    /// `k of n`, or – when there is nothing to count.
    fn of(&self) -> String {
        if self.n == 0 {
            "–".into()
        } else {
            format!("{} of {}", self.flagged, self.n)
        }
    }
}

/// The markdown section: one row per scenario, one per category, and the first finding of
/// each rule in each scenario.
pub fn print(replayed: &[Replayed], files: &[String]) {
    println!("\n## Scenario sequences: all detectors, step by step\n");
    println!(
        "Scenarios from {}. Each scenario's steps are replayed in order through all detectors with \
         their default parameters: the injection detectors on each request (paranoia 1), and \
         {} on each step as an exchange (shadowEndpoint is skipped: the scenarios have no OpenAPI \
         document). Detector state is fresh for each scenario. Every step comes from one client, \
         {SOURCE}; the clock advances by 1 s per step (the scenarios carry no timing); the status is \
         the step's `response.status`, or 0 (unknown) when the step has no response, and the \
         response body is the step's `response.body` when it has one. The steps are not replayed \
         through the WAF.\n",
        files.join(", "),
        Behaviour::NAMES.join(", ")
    );
    println!(
        "A scenario is detected when a detector flags any of its attack steps. Benign steps \
         flagged are false positives. A step whose response is itself the problem \
         (`response_category`, e.g. a benign request answered with other users' personal data) \
         is counted apart, as a leaky response.\n"
    );
    println!(
        "| scenario | OWASP | steps | attack steps | benign steps | attack steps flagged | by rule | \
         benign steps flagged (FP) | leaky responses flagged | detected |"
    );
    println!("|---|---|---:|---:|---:|---:|---|---:|---:|---|");
    let mut by_category: BTreeMap<String, (Tally, usize, usize)> = BTreeMap::new();
    let (mut attacks, mut benign, mut leaks) = (Tally::default(), Tally::default(), Tally::default());
    let mut detected = 0;
    for s in replayed {
        let (mut a, mut b, mut l) = (Tally::default(), Tally::default(), Tally::default());
        let mut categories: BTreeMap<String, bool> = BTreeMap::new();
        for step in &s.steps {
            if step.attack {
                a.add(step);
                let seen = categories.entry(step.category.clone()).or_default();
                *seen |= !step.fired.is_empty();
                by_category.entry(step.category.clone()).or_default().0.add(step);
            }
            if let Some(rc) = &step.response_category {
                l.add(step);
                let name = format!("{rc} (response)");
                let seen = categories.entry(name.clone()).or_default();
                *seen |= !step.fired.is_empty();
                by_category.entry(name).or_default().0.add(step);
            }
            if step.is_benign() {
                b.add(step);
            }
        }
        for (category, seen) in categories {
            let entry = by_category.entry(category).or_default();
            entry.1 += 1;
            entry.2 += usize::from(seen);
        }
        let hit = a.flagged > 0;
        detected += usize::from(hit);
        let fp = if b.by_rule.is_empty() {
            b.flagged.to_string()
        } else {
            format!("{} ({})", b.flagged, b.rules())
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {fp} | {} | {} |",
            s.id,
            s.owasp,
            s.steps.len(),
            a.n,
            b.n,
            a.flagged,
            a.rules(),
            l.of(),
            if hit { "yes" } else { "**no**" }
        );
        for (mine, all) in [(&a, &mut attacks), (&b, &mut benign), (&l, &mut leaks)] {
            all.n += mine.n;
            all.flagged += mine.flagged;
            for (rule, n) in &mine.by_rule {
                *all.by_rule.entry(rule.clone()).or_default() += n;
            }
        }
    }
    println!(
        "\nScenarios detected: {detected} of {}. Attack steps flagged: {} ({}). Benign steps \
         flagged: {} ({}). Leaky responses flagged: {}.",
        replayed.len(),
        attacks.of(),
        attacks.rules(),
        benign.of(),
        benign.rules(),
        leaks.of()
    );

    println!("\n### Per category\n");
    println!("| category | scenarios | scenarios detected | steps | steps flagged | by rule |");
    println!("|---|---:|---:|---:|---:|---|");
    for (category, (t, scenarios, seen)) in &by_category {
        println!(
            "| {category} | {scenarios} | {seen} | {} | {} | {} |",
            t.n,
            t.flagged,
            t.rules()
        );
    }

    println!("\n### First finding of each rule per scenario\n");
    let mut any = false;
    for s in replayed {
        let mut seen = BTreeSet::new();
        for (i, step) in s.steps.iter().enumerate() {
            for (rule, evidence) in &step.fired {
                if seen.insert(rule.as_str()) {
                    any = true;
                    let label = if step.attack { "attack" } else { "benign" };
                    println!("- {} step {} ({label}): {rule}: {evidence}", s.id, i + 1);
                }
            }
        }
    }
    if !any {
        println!("None.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnLWJvYg";

    fn step(label: &str, category: &str, uri: &str) -> Value {
        serde_json::json!({
            "label": label, "category": category, "method": "GET", "uri": uri,
            "headers": {"Host": "localhost", "Authorization": TOKEN}, "body": null
        })
    }

    #[test]
    fn enumeration_is_flagged_by_bola_and_browsing_is_not() {
        let mut steps: Vec<Value> = ["/shop/products", "/users/me", "/shop/orders?limit=20"]
            .iter()
            .map(|uri| step("benign", "benign", uri))
            .collect();
        steps.extend((1..=12).map(|i| {
            step(
                "attack",
                "bola_id_enumeration",
                &format!("/reports?report_id={i}"),
            )
        }));
        let line = serde_json::json!({"source": "t", "id": "enum", "owasp_api": "API1 BOLA", "steps": steps});
        assert!(Scenario::is_scenario(&line));
        let scenario = Scenario::from_json(&line).unwrap();
        assert_eq!(scenario.steps.len(), 15);
        assert_eq!(scenario.steps[3].request.target, "/reports?report_id=1");
        assert_eq!(scenario.steps[3].status, 0);

        let replayed = replay(&scenario).unwrap();
        let (benign, attack) = replayed.steps.split_at(3);
        assert!(benign.iter().all(|s| s.fired.is_empty() && s.is_benign()));
        // bola's default is 10 distinct IDs within a minute: IDs 1–9 pass, 10–12 are flagged.
        let flagged: Vec<usize> = (0..attack.len())
            .filter(|i| !attack[*i].fired.is_empty())
            .collect();
        assert_eq!(flagged, [9, 10, 11]);
        for s in &attack[9..] {
            assert_eq!(s.fired.len(), 1);
            let (rule, evidence) = &s.fired[0];
            assert_eq!(rule, "bola");
            assert!(
                evidence.starts_with("one token subject (via 203.0.113.7) touched 10 distinct object IDs"),
                "{evidence}"
            );
        }
        // Fresh state: the same scenario again gives the same answer.
        let again = replay(&scenario).unwrap();
        assert_eq!(again.steps[12].fired, replayed.steps[12].fired);
    }

    #[test]
    fn responses_and_labels_are_read() {
        let mut leaky = step("benign", "benign", "/community/posts");
        leaky["response"] = serde_json::json!({"status": 200, "body": "[]"});
        leaky["response_category"] = "pii_exposure".into();
        let line = serde_json::json!({"id": "r", "steps": [leaky]});
        let s = Scenario::from_json(&line).unwrap();
        assert_eq!(s.steps[0].status, 200);
        assert_eq!(s.steps[0].response_body.as_deref(), Some(&b"[]"[..]));
        assert_eq!(s.steps[0].response_category.as_deref(), Some("pii_exposure"));
        let replayed = replay(&s).unwrap();
        assert!(!replayed.steps[0].is_benign());

        let bad = serde_json::json!({"id": "x", "steps": [step("maybe", "bola", "/")]});
        let err = Scenario::from_json(&bad).err().unwrap_or_default();
        assert!(err.contains("step 1") && err.contains("label"), "{err}");
        let err = Scenario::from_json(&serde_json::json!({"id": "y", "steps": {}}))
            .err()
            .unwrap_or_default();
        assert!(err.contains("not an array"), "{err}");
    }
}

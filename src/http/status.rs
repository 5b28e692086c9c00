//! The driftsstatus page (`/`, Danish; `/?lang=en`, English), its Atom feed
//! (`/feed.atom`) and JSON (`/api/status.json`): server-rendered with
//! askama templates checked at compile time, usable without JavaScript.

use askama::Template;
use axum::extract::{Query, State as Extract};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};

use super::Views;
use crate::status::{self, Inputs, Lang, Status, component_name};

#[derive(serde::Deserialize)]
pub struct LangQuery {
    lang: Option<String>,
}

/// Gathers the status from the state database and the config in force.
async fn current(views: &Views) -> Result<Status, String> {
    let state = views.state.as_ref().ok_or("no state database")?;
    let config = views.config.get();
    let now = Utc::now();
    let since = now - Duration::days(status::HISTORY_DAYS);
    let incidents = state.incidents(since).await.map_err(|e| e.to_string())?;
    let maintenance = state.maintenance(since).await.map_err(|e| e.to_string())?;
    let mut last_load_failed = Vec::new();
    let mut load_days = Vec::new();
    for area in &config.areas {
        let (days, failed) = state
            .load_days(&area.id, since)
            .await
            .map_err(|e| e.to_string())?;
        last_load_failed.push((area.id.clone(), failed));
        load_days.push((area.id.clone(), days));
    }
    let inputs = Inputs {
        areas: config.areas.iter().map(|a| a.id.clone()).collect(),
        incidents,
        maintenance,
        last_load_failed,
        load_days,
        source_up: crate::metrics::get().source_is_up(),
    };
    Ok(status::status(&inputs, now))
}

fn unavailable(e: String) -> Response {
    tracing::warn!(error = %e, "status page unavailable");
    (StatusCode::SERVICE_UNAVAILABLE, "status unavailable\n").into_response()
}

/// Danish time, as people at STAR and the suppliers read it.
fn local(t: DateTime<Utc>) -> String {
    t.with_timezone(&chrono_tz::Europe::Copenhagen)
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

struct ComponentView {
    name: String,
    level: &'static str,
    label: &'static str,
    days: Vec<DayView>,
}

struct DayView {
    level: &'static str,
    text: String,
}

struct UpdateView {
    at: String,
    state: String,
    message: String,
}

struct IncidentView {
    title: String,
    component: String,
    impact: &'static str,
    opened: String,
    resolved: Option<String>,
    updates: Vec<UpdateView>,
}

struct MaintenanceView {
    kind: &'static str,
    title: String,
    component: String,
    window: String,
    description: String,
}

#[derive(Template)]
#[template(path = "status.html")]
struct Page {
    lang: &'static str,
    t: &'static Texts,
    other_lang_href: &'static str,
    other_lang_name: &'static str,
    other_lang: &'static str,
    overall: &'static str,
    overall_label: &'static str,
    updated: String,
    components: Vec<ComponentView>,
    open: Vec<IncidentView>,
    past: Vec<IncidentView>,
    planned: Vec<MaintenanceView>,
    areas: Vec<AreaView>,
    announcements: Vec<AnnouncementView>,
}

/// An announcement from the announcements file.
struct AnnouncementView {
    id: String,
    kind: &'static str,
    title: String,
    effective: String,
    areas: String,
    /// Rendered from the operator's Markdown, raw HTML escaped.
    body_html: String,
}

/// A data area and its data dictionary, from the config in force.
struct AreaView {
    id: String,
    version: u32,
    /// Its stage now, with the next planned change.
    stage: String,
    description: String,
    fields: Vec<(String, String)>,
}

/// The page's fixed texts in one language.
struct Texts {
    title: &'static str,
    skip: &'static str,
    overall: &'static str,
    updated: &'static str,
    components: &'static str,
    history: &'static str,
    history_note: &'static str,
    legend: &'static str,
    open: &'static str,
    none_open: &'static str,
    planned: &'static str,
    none_planned: &'static str,
    past: &'static str,
    none_past: &'static str,
    opened: &'static str,
    resolved: &'static str,
    component: &'static str,
    impact: &'static str,
    feed: &'static str,
    json: &'static str,
    areas: &'static str,
    areas_note: &'static str,
    announcements: &'static str,
    none_announced: &'static str,
    effective: &'static str,
    all_areas: &'static str,
    version: &'static str,
    field: &'static str,
    description: &'static str,
}

const DA: Texts = Texts {
    title: "Driftsstatus for Udstillingsplatformen",
    skip: "Gå til indhold",
    overall: "Samlet status",
    updated: "Opdateret",
    components: "Komponenter",
    history: "De seneste 90 dage",
    history_note: "Én markering pr. dag, ældste først.",
    legend: "Forklaring",
    open: "Aktuelle hændelser",
    none_open: "Ingen aktuelle hændelser.",
    planned: "Planlagt vedligeholdelse og releases",
    none_planned: "Intet planlagt.",
    past: "Tidligere hændelser",
    none_past: "Ingen hændelser de seneste 90 dage.",
    opened: "Startet",
    resolved: "Løst",
    component: "Komponent",
    impact: "Påvirkning",
    feed: "Abonnér (Atom)",
    json: "Status som JSON",
    announcements: "Meddelelser til leverandørerne",
    none_announced: "Ingen meddelelser.",
    effective: "Gælder fra",
    all_areas: "alle dataområder",
    areas: "Dataområder",
    areas_note: "Hvert felts beskrivelse. Den fulde dataordbog med typer ligger som DICTIONARY.md og DICTIONARY.json i hver versionsmappe.",
    version: "version",
    field: "Felt",
    description: "Beskrivelse",
};

const EN: Texts = Texts {
    title: "Status of the data-exposure platform",
    skip: "Skip to content",
    overall: "Overall status",
    updated: "Updated",
    components: "Components",
    history: "The last 90 days",
    history_note: "One mark per day, oldest first.",
    legend: "Legend",
    open: "Current incidents",
    none_open: "No current incidents.",
    planned: "Planned maintenance and releases",
    none_planned: "Nothing planned.",
    past: "Past incidents",
    none_past: "No incidents in the last 90 days.",
    opened: "Started",
    resolved: "Resolved",
    component: "Component",
    impact: "Impact",
    feed: "Subscribe (Atom)",
    json: "Status as JSON",
    announcements: "Announcements to suppliers",
    none_announced: "No announcements.",
    effective: "Effective",
    all_areas: "every data area",
    areas: "Data areas",
    areas_note: "Each field's description. The full data dictionary with types is DICTIONARY.md and DICTIONARY.json in each version folder.",
    version: "version",
    field: "Field",
    description: "Description",
};

fn state_label(state: &str, lang: Lang) -> String {
    let da = match state {
        "investigating" => "Undersøges",
        "identified" => "Årsag fundet",
        "monitoring" => "Overvåges",
        "resolved" => "Løst",
        other => other,
    };
    let en = match state {
        "investigating" => "Investigating",
        "identified" => "Identified",
        "monitoring" => "Monitoring",
        "resolved" => "Resolved",
        other => other,
    };
    match lang {
        Lang::Da => da.into(),
        Lang::En => en.into(),
    }
}

fn incident_view(i: &status::Incident, lang: Lang) -> IncidentView {
    IncidentView {
        title: i.title.clone(),
        component: component_name(&i.component, lang),
        impact: i.impact.label(lang),
        opened: local(i.opened_at),
        resolved: i.resolved_at.map(local),
        updates: i
            .updates
            .iter()
            .rev()
            .map(|u| UpdateView {
                at: local(u.at),
                state: state_label(&u.state, lang),
                message: u.message.clone(),
            })
            .collect(),
    }
}

fn page(s: &Status, config: &crate::config::Config, lang: Lang) -> Page {
    let t: &'static Texts = match lang {
        Lang::Da => &DA,
        Lang::En => &EN,
    };
    let (other_lang_href, other_lang_name, other_lang) = match lang {
        Lang::Da => ("/?lang=en", "English", "en"),
        Lang::En => ("/", "Dansk", "da"),
    };
    Page {
        lang: match lang {
            Lang::Da => "da",
            Lang::En => "en",
        },
        t,
        other_lang_href,
        other_lang_name,
        other_lang,
        overall: s.overall.as_str(),
        overall_label: s.overall.label(lang),
        updated: local(s.at),
        components: s
            .components
            .iter()
            .map(|c| ComponentView {
                name: component_name(&c.id, lang),
                level: c.level.as_str(),
                label: c.level.label(lang),
                days: c
                    .days
                    .iter()
                    .map(|(day, level)| DayView {
                        level: level.as_str(),
                        text: format!("{day}: {}", level.label(lang)),
                    })
                    .collect(),
            })
            .collect(),
        open: s.open.iter().map(|i| incident_view(i, lang)).collect(),
        past: s.past.iter().map(|i| incident_view(i, lang)).collect(),
        planned: s
            .planned
            .iter()
            .map(|m| MaintenanceView {
                kind: match (m.kind.as_str(), lang) {
                    ("release", Lang::Da) => "Release",
                    ("release", Lang::En) => "Release",
                    (_, Lang::Da) => "Vedligeholdelse",
                    (_, Lang::En) => "Maintenance",
                },
                title: m.title.clone(),
                component: m
                    .component
                    .as_deref()
                    .map(|c| component_name(c, lang))
                    .unwrap_or_else(|| match lang {
                        Lang::Da => "Hele platformen".into(),
                        Lang::En => "The whole platform".into(),
                    }),
                window: format!("{} – {}", local(m.starts_at), local(m.ends_at)),
                description: m.description.clone(),
            })
            .collect(),
        announcements: announcements(config)
            .into_iter()
            .map(|a| AnnouncementView {
                id: a.id.clone(),
                kind: a.kind.label(lang == Lang::Da),
                title: a.title.clone(),
                effective: local(a.effective),
                areas: if a.areas.is_empty() {
                    t.all_areas.to_string()
                } else {
                    a.areas.iter().cloned().collect::<Vec<_>>().join(", ")
                },
                body_html: crate::announce::html(&a.body),
            })
            .collect(),
        areas: config
            .areas
            .iter()
            .map(|a| AreaView {
                id: a.id.clone(),
                version: a.version,
                stage: stage_text(a, lang),
                description: a.description.clone().unwrap_or_default(),
                fields: a
                    .fields
                    .iter()
                    .map(|(c, d)| (c.clone(), d.clone()))
                    .collect(),
            })
            .collect(),
    }
}

/// An area's stage now, with its next planned change, as suppliers read it.
fn stage_text(a: &crate::config::Area, lang: Lang) -> String {
    use crate::lifecycle::Stage;
    let da = lang == Lang::Da;
    let Some(l) = &a.lifecycle else {
        return if da { "i produktion" } else { "in production" }.into();
    };
    let from = |t: Option<DateTime<Utc>>, da_text: &str, en_text: &str| {
        t.map(|t| format!(" ({} {})", if da { da_text } else { en_text }, local(t)))
            .unwrap_or_default()
    };
    match a.stage_at(Utc::now()) {
        Stage::Planned => format!(
            "{}{}",
            if da { "planlagt" } else { "planned" },
            from(l.test_from.or(Some(l.production_from)), "fra", "from")
        ),
        Stage::Test => format!(
            "test{}",
            from(Some(l.production_from), "produktion fra", "production from")
        ),
        Stage::Production => format!(
            "{}{}",
            if da { "i produktion" } else { "in production" },
            from(l.retired_from, "udfases", "retired from")
        ),
        Stage::Retired => format!(
            "{}{}",
            if da { "udfaset" } else { "retired" },
            from(l.removed_from, "fjernes", "removed")
        ),
    }
}

/// The announcements of the config in force, newest effective date first.
fn announcements(config: &crate::config::Config) -> Vec<&crate::announce::Announcement> {
    let mut list: Vec<_> = config.announcements.iter().collect();
    list.sort_by(|a, b| b.effective.cmp(&a.effective).then(a.id.cmp(&b.id)));
    list
}

/// `/`: the page, Danish unless `?lang=en`.
pub async fn html(Extract(views): Extract<Views>, Query(q): Query<LangQuery>) -> Response {
    let lang = match q.lang.as_deref() {
        Some("en") => Lang::En,
        _ => Lang::Da,
    };
    match current(&views).await {
        Ok(s) => match page(&s, &views.config.get(), lang).render() {
            Ok(html) => {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
            }
            Err(e) => unavailable(e.to_string()),
        },
        Err(e) => unavailable(e),
    }
}

/// `/api/status.json`: the same status as data.
pub async fn json(Extract(views): Extract<Views>) -> Response {
    match current(&views).await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => unavailable(e),
    }
}

struct Entry {
    id: String,
    title: String,
    updated: String,
    summary: String,
}

#[derive(Template)]
#[template(path = "feed.xml")]
struct Feed {
    updated: String,
    entries: Vec<Entry>,
}

/// `/feed.atom`: incidents (one entry per update) and planned maintenance,
/// newest first, in Danish.
pub async fn atom(Extract(views): Extract<Views>) -> Response {
    let s = match current(&views).await {
        Ok(s) => s,
        Err(e) => return unavailable(e),
    };
    let rfc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut entries: Vec<(DateTime<Utc>, Entry)> = Vec::new();
    for i in s.open.iter().chain(&s.past) {
        for (n, u) in i.updates.iter().enumerate() {
            entries.push((
                u.at,
                Entry {
                    id: format!("urn:udstil:incident:{}:{n}", i.id),
                    title: format!("{} – {}", i.title, state_label(&u.state, Lang::Da)),
                    updated: rfc(u.at),
                    summary: format!(
                        "{}: {}. {}",
                        component_name(&i.component, Lang::Da),
                        i.impact.label(Lang::Da),
                        u.message
                    ),
                },
            ));
        }
    }
    for a in announcements(&views.config.get()) {
        entries.push((
            a.effective,
            Entry {
                id: format!("urn:udstil:announcement:{}", a.id),
                title: format!("{}: {}", a.kind.label(true), a.title),
                updated: rfc(a.effective),
                summary: a.body.trim().to_string(),
            },
        ));
    }
    for m in &s.planned {
        entries.push((
            m.starts_at,
            Entry {
                id: format!("urn:udstil:maintenance:{}", m.id),
                title: m.title.clone(),
                updated: rfc(m.starts_at),
                summary: format!(
                    "{} – {}. {}",
                    local(m.starts_at),
                    local(m.ends_at),
                    m.description
                ),
            },
        ));
    }
    entries.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let feed = Feed {
        updated: entries
            .first()
            .map(|(at, _)| rfc(*at))
            .unwrap_or_else(|| rfc(s.at)),
        entries: entries.into_iter().map(|(_, e)| e).collect(),
    };
    match feed.render() {
        Ok(xml) => (
            [(header::CONTENT_TYPE, "application/atom+xml; charset=utf-8")],
            xml,
        )
            .into_response(),
        Err(e) => unavailable(e.to_string()),
    }
}

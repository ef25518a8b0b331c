#!/usr/bin/env python3
"""Regenerate the binary documents of the fictional Northwind Lattice demo drive.

Northwind Lattice and everything in its drive are invented for this demo. The text files of
the drive (md, html, txt, eml) are written by hand and live in ``demo/org/drive``; this
script writes the files that need a library to produce (docx, pdf, xlsx, pptx) from the text
defined below, plus two deliberately unreadable files in ``misc/``.

    .venv/bin/python demo/make_org.py           # (re)write what changed
    .venv/bin/python demo/make_org.py --check   # exit 1 when a file is out of date

The output is byte-stable: dates in the document properties are fixed, Office zip entries
get a fixed timestamp and order, and the PDF creation date (which also seeds the PDF file
id) is fixed. A file whose bytes would not change is not rewritten, so its mtime stays put.
Stability assumes the same library versions (python-docx, python-pptx, openpyxl, fpdf2)
and the same zlib; another version may produce different, equally valid bytes.

Needs python-docx, python-pptx, openpyxl and fpdf2 (core fonts only, so latin-1 text).
"""

from __future__ import annotations

import io
import random
import re
import sys
import textwrap
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docx import Document
from docx.shared import Pt
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from openpyxl import Workbook
from openpyxl.styles import Font
from pptx import Presentation
from pptx.enum.shapes import MSO_CONNECTOR, MSO_SHAPE
from pptx.util import Inches
from pptx.util import Pt as PptPt

DRIVE = Path(__file__).resolve().parent / "org" / "drive"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

Block = tuple[str, Any]

# --------------------------------------------------------------------------------------
# A tiny markup for docx and pdf bodies: "# ", "## ", "### " headings, "- " bullets,
# "1. " numbered items, "| a | b |" table rows (first row is the header; a row without its
# closing "|" continues on the next line), "_x_" an italic paragraph, blank lines between
# paragraphs; indented lines continue the previous list item.
# --------------------------------------------------------------------------------------


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            text = " ".join(para)
            italic = len(text) > 2 and text.startswith("_") and text.endswith("_")
            blocks.append(("meta", text[1:-1]) if italic else ("p", text))
            para.clear()

    pending = ""  # a table row continued on the next line (no closing "|" yet)
    for raw in textwrap.dedent(text).strip("\n").splitlines():
        if pending or (raw.lstrip().startswith("|") and not raw.rstrip().endswith("|")):
            pending += (" " if pending else "") + raw.strip()
            if not pending.endswith("|"):
                continue
            line, pending = pending, ""
        else:
            line = raw
        s = line.strip()
        last = blocks[-1] if blocks else None
        if not s:
            flush()
        elif line.startswith("  ") and not para and last and last[0] in ("ul", "ol"):
            last[1][-1] += " " + s
        elif m := re.match(r"(#{1,3}) (.*)", s):
            flush()
            blocks.append((f"h{len(m.group(1))}", m.group(2)))
        elif s.startswith("- ") or re.match(r"\d+\. ", s):
            flush()
            kind = "ul" if s.startswith("- ") else "ol"
            item = s[2:] if kind == "ul" else s.split(" ", 1)[1]
            if last and last[0] == kind:
                last[1].append(item)
            else:
                blocks.append((kind, [item]))
        elif s.startswith("|"):
            flush()
            cells = [c.strip() for c in s.strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue
            if last and last[0] == "table":
                last[1].append(cells)
            else:
                blocks.append(("table", [cells]))
        else:
            para.append(s)
    flush()
    return blocks


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------


def _w3c(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def stable_zip(data: bytes, when: datetime) -> bytes:
    """Rewrite an Office zip with fixed entry timestamps and fixed core-property dates."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as dst,
    ):
        for info in src.infolist():
            blob = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                text = blob.decode("utf-8")
                text = re.sub(
                    r"(<dcterms:(created|modified)\b[^>]*>)[^<]*(</dcterms:\2>)",
                    lambda m: m.group(1) + _w3c(when) + m.group(3),
                    text,
                )
                blob = text.encode("utf-8")
            entry = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.create_system = 3
            entry.external_attr = 0o644 << 16
            dst.writestr(entry, blob, compresslevel=6)
    return out.getvalue()


def _set_core(props: Any, title: str, author: str, when: datetime) -> None:
    props.title = title
    props.author = author
    props.last_modified_by = author
    props.created = when.replace(tzinfo=None)
    props.modified = when.replace(tzinfo=None)
    props.revision = 1
    props.comments = "Fictional demo document (Northwind Lattice)."


def docx_bytes(title: str, author: str, when: datetime, body: str) -> bytes:
    doc = Document()
    _set_core(doc.core_properties, title, author, when)
    doc.styles["Normal"].font.name = "Calibri"
    doc.styles["Normal"].font.size = Pt(11)
    doc.add_heading(title, 0)
    for kind, value in parse(body):
        if kind in ("h1", "h2", "h3"):
            doc.add_heading(value, int(kind[1]))
        elif kind == "p":
            doc.add_paragraph(value)
        elif kind == "meta":
            doc.add_paragraph().add_run(value).italic = True
        elif kind in ("ul", "ol"):
            style = "List Bullet" if kind == "ul" else "List Number"
            for item in value:
                doc.add_paragraph(item, style=style)
        elif kind == "table":
            table = doc.add_table(rows=len(value), cols=len(value[0]))
            table.style = "Table Grid"
            for r, row in enumerate(value):
                for c, text in enumerate(row):
                    cell = table.cell(r, c)
                    cell.text = text
                    if r == 0:
                        for run in cell.paragraphs[0].runs:
                            run.bold = True
            doc.add_paragraph()
    buf = io.BytesIO()
    doc.save(buf)
    return stable_zip(buf.getvalue(), when)


class _Pdf(FPDF):
    footer_text = ""

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font("helvetica", "I", 8)
        self.set_text_color(110, 110, 110)
        self.cell(0, 8, f"{self.footer_text} - page {self.page_no()}", align="C")
        self.set_text_color(0, 0, 0)


def pdf_bytes(title: str, author: str, when: datetime, footer: str, body: str) -> bytes:
    pdf = _Pdf(format="A4")
    pdf.footer_text = footer
    pdf.set_creation_date(when)
    pdf.set_title(title)
    pdf.set_author(author)
    pdf.set_creator("Northwind Lattice demo generator (demo/make_org.py)")
    pdf.set_subject("Fictional demo document")
    pdf.set_lang("en")
    pdf.set_margins(18, 18, 18)
    pdf.set_auto_page_break(True, margin=20)
    pdf.add_page()
    nl = {"new_x": XPos.LMARGIN, "new_y": YPos.NEXT}
    pdf.set_font("helvetica", "B", 17)
    pdf.multi_cell(0, 9, title, **nl)
    pdf.ln(2)
    sizes = {"h1": 14, "h2": 12, "h3": 11}
    for kind, value in parse(body):
        if kind in sizes:
            pdf.ln(2)
            pdf.set_font("helvetica", "B", sizes[kind])
            pdf.multi_cell(0, 7, value, **nl)
            pdf.ln(1)
        elif kind in ("p", "meta"):
            pdf.set_font("helvetica", "I" if kind == "meta" else "", 10)
            pdf.multi_cell(0, 5, value, **nl)
            pdf.ln(2)
        elif kind in ("ul", "ol"):
            pdf.set_font("helvetica", "", 10)
            for n, item in enumerate(value, 1):
                mark = "-" if kind == "ul" else f"{n}."
                pdf.set_x(pdf.l_margin + 3)
                pdf.multi_cell(0, 5, f"{mark} {item}", **nl)
            pdf.ln(2)
        elif kind == "table":
            pdf.set_font("helvetica", "", 9)
            widths = [
                min(max(max(len(row[c]) for row in value), 6), 50) for c in range(len(value[0]))
            ]
            with pdf.table(col_widths=widths, line_height=5, text_align="LEFT", padding=1) as table:
                for row in value:
                    cells = table.row()
                    for text in row:
                        cells.cell(text)
            pdf.ln(3)
    return bytes(pdf.output())


def xlsx_bytes(
    title: str, author: str, when: datetime, sheets: list[tuple[str, list[list[Any]]]]
) -> bytes:
    """``sheets``: (name, rows); the first row of each sheet is a bold header."""
    wb = Workbook()
    wb.remove(wb.active)
    _set_core(wb.properties, title, author, when)
    wb.properties.lastModifiedBy = author
    for name, rows in sheets:
        ws = wb.create_sheet(name)
        for row in rows:
            ws.append(row)
        for cell in ws[1]:
            cell.font = Font(bold=True)
        ws.freeze_panes = "A2"
        for col in ws.columns:
            width = max(len(str(c.value)) if c.value is not None else 0 for c in col)
            ws.column_dimensions[col[0].column_letter].width = min(max(width + 2, 10), 60)
        for row in ws.iter_rows(min_row=2):
            for cell in row:
                if isinstance(cell.value, int) and abs(cell.value) >= 1000:
                    cell.number_format = "#,##0"
                elif isinstance(cell.value, float):
                    cell.number_format = "#,##0.00" if abs(cell.value) >= 1 else "0.0%"
    buf = io.BytesIO()
    wb.save(buf)
    return stable_zip(buf.getvalue(), when)


def pptx_bytes(title: str, author: str, when: datetime, slides: list[dict[str, Any]]) -> bytes:
    """Slides: {"title", "subtitle"} | {"title", "bullets"} | {"title", "table"} |
    {"title", "boxes": [(text, x, y, w, h)], "lines": [(x1, y1, x2, y2)]}; all may have
    "notes". Box and line coordinates are in inches."""
    prs = Presentation()
    _set_core(prs.core_properties, title, author, when)
    for spec in slides:
        if "subtitle" in spec:
            slide = prs.slides.add_slide(prs.slide_layouts[0])
            slide.shapes.title.text = spec["title"]
            slide.placeholders[1].text = spec["subtitle"]
        elif "bullets" in spec:
            slide = prs.slides.add_slide(prs.slide_layouts[1])
            slide.shapes.title.text = spec["title"]
            frame = slide.placeholders[1].text_frame
            for i, item in enumerate(spec["bullets"]):
                level, text = (1, item[2:]) if item.startswith("> ") else (0, item)
                para = frame.paragraphs[0] if i == 0 else frame.add_paragraph()
                para.text = text
                para.level = level
                para.font.size = PptPt(18 if level == 0 else 15)
        elif "table" in spec:
            slide = prs.slides.add_slide(prs.slide_layouts[5])
            slide.shapes.title.text = spec["title"]
            rows = spec["table"]
            shape = slide.shapes.add_table(
                len(rows),
                len(rows[0]),
                Inches(0.4),
                Inches(1.6),
                Inches(9.2),
                Inches(0.4 * len(rows)),
            )
            for r, row in enumerate(rows):
                for c, text in enumerate(row):
                    cell = shape.table.cell(r, c)
                    cell.text = str(text)
                    for para in cell.text_frame.paragraphs:
                        para.font.size = PptPt(12)
        else:
            slide = prs.slides.add_slide(prs.slide_layouts[5])
            slide.shapes.title.text = spec["title"]
            for x1, y1, x2, y2 in spec.get("lines", []):
                slide.shapes.add_connector(
                    MSO_CONNECTOR.STRAIGHT, Inches(x1), Inches(y1), Inches(x2), Inches(y2)
                )
            for text, x, y, w, h in spec["boxes"]:
                box = slide.shapes.add_shape(
                    MSO_SHAPE.ROUNDED_RECTANGLE, Inches(x), Inches(y), Inches(w), Inches(h)
                )
                box.text_frame.text = text
                box.text_frame.word_wrap = True
                for para in box.text_frame.paragraphs:
                    para.font.size = PptPt(12)
        if "notes" in spec:
            slide.notes_slide.notes_text_frame.text = spec["notes"]
    buf = io.BytesIO()
    prs.save(buf)
    return stable_zip(buf.getvalue(), when)


def when(day: str) -> datetime:
    return datetime.fromisoformat(day + "T09:00:00").replace(tzinfo=UTC)


# ======================================================================================
# handbook/ (group:everyone)
# ======================================================================================

ONBOARDING = """
_Owner: Frank Dubois, People Operations. Use this checklist with your manager; tick items off
as you go. Last reviewed 2 November 2026._

Every new employee at Northwind Lattice works through this checklist in their first month.
Your manager owns the checklist with you; People Operations checks in at the end of week one
and at the end of month one. Contractors get a shorter version from their hiring manager.

## Before day one

| Task | Owner | Done |
| --- | --- | --- |
| Signed contract and copy of ID received | Frank Dubois | |
| Laptop ordered, encrypted and enrolled | Dan Whitfield | |
| Two hardware security keys prepared | Dan Whitfield | |
| Work email and chat accounts created | Dan Whitfield | |
| Buddy assigned (someone outside your team) | Your manager | |
| Payroll details sent to the payroll provider | Alice Brandt | |

## Day one

| Task | Owner | Done |
| --- | --- | --- |
| Welcome coffee and office tour at Kadeweg 14 | Frank Dubois | |
| Collect laptop and security keys; set up Keyfort | Dan Whitfield | |
| Read the welcome page and security basics | You | |
| Lunch with your buddy | Buddy | |
| First one-to-one with your manager: goals for month one | Your manager | |

## Week one

- Coffee chat with every colleague (30 minutes each).
- Read the remote work policy, the expenses policy and the holiday calendar.
- Install the LatticeCloud demo tenant and walk through the dashboard with Erin Takahashi:
  every employee should be able to demo the product in ten minutes.
- Visit the lab fleet in the office and commission one LatticeNode yourself with the
  installer app.
- Engineers: get access to staging, read the architecture overview and shadow the on-call
  engineer for one day.
- Sales: sit in on at least two customer calls.

## Month one

- Agree on three goals for your first three months with your manager and write them down.
- Give People Operations feedback on this checklist: what was missing, what was useless.
- Join a customer site visit if one is scheduled.
- Engineers: fix one small bug end to end, from ticket to production.
- End-of-month check-in with Frank Dubois (20 minutes).

## Probation

The probation period is one month for contracts of up to two years and two months for
permanent contracts. Your manager gives you written feedback halfway through.
"""

ORG_CHART: list[dict[str, Any]] = [
    {
        "title": "Northwind Lattice - Organisation",
        "subtitle": "Who reports to whom, November 2026\nOwner: Frank Dubois, People Operations",
    },
    {
        "title": "Leadership",
        "boxes": [
            ("Dana Okafor\nCEO and co-founder", 3.5, 1.6, 3.0, 0.9),
            ("Dan Whitfield\nHead of Engineering, co-founder, hiring lead", 0.2, 3.6, 2.2, 1.1),
            ("Alice Brandt\nFinance Lead", 2.6, 3.6, 2.2, 1.1),
            ("Erin Takahashi\nHead of Sales", 5.0, 3.6, 2.2, 1.1),
            ("Frank Dubois\nPeople Operations Manager", 7.4, 3.6, 2.2, 1.1),
        ],
        "lines": [
            (5.0, 2.5, 1.3, 3.6),
            (5.0, 2.5, 3.7, 3.6),
            (5.0, 2.5, 6.1, 3.6),
            (5.0, 2.5, 8.5, 3.6),
        ],
        "notes": "Dana Okafor is CEO. Four people report to her: Dan Whitfield (engineering), "
        "Alice Brandt (finance), Erin Takahashi (sales) and Frank Dubois (people operations).",
    },
    {
        "title": "Teams",
        "boxes": [
            ("Engineering\nDan Whitfield (lead)", 0.3, 1.7, 2.8, 0.9),
            ("Carol Mendes\nSenior Firmware Engineer", 0.3, 3.0, 2.8, 0.9),
            (
                "Grace Kowalczyk\nContract Cloud Engineer (Brightforge, until June 2027)",
                0.3,
                4.3,
                2.8,
                1.2,
            ),
            ("Finance\nAlice Brandt (lead)", 3.6, 1.7, 2.8, 0.9),
            ("Bob Lindqvist\nFinance Intern (until February 2027)", 3.6, 3.0, 2.8, 0.9),
            ("Sales\nErin Takahashi", 6.9, 1.7, 2.8, 0.9),
            ("People Operations\nFrank Dubois; Dan Whitfield as hiring lead", 6.9, 3.0, 2.8, 1.0),
        ],
        "lines": [(1.7, 2.6, 1.7, 3.0), (1.7, 3.9, 1.7, 4.3), (5.0, 2.6, 5.0, 3.0)],
        "notes": "Eight people in total: seven employees and one contractor (Grace).",
    },
    {
        "title": "Who to ask for what",
        "bullets": [
            "Laptops, accounts, security keys: Dan Whitfield",
            "Expenses, invoices, purchase approvals: Alice Brandt",
            "Vacation, sick leave, contracts, working abroad: Frank Dubois",
            "Customer questions and demos: Erin Takahashi",
            "Anything else, or if you are not sure: Dana Okafor",
        ],
    },
]

# ======================================================================================
# engineering/ (group:engineering + group:eng-contractors)
# ======================================================================================

RELEASE_PROCESS = """
_Owner: Dan Whitfield. Version 3, updated 14 October 2026 after SUP-101. Audience:
engineering._

# 1. Purpose and scope

This document describes how we release software that runs on customer hardware: LatticeNode
firmware and GateOS, the gateway operating system. A bad release can silence thousands of
sensors at once, and unlike a cloud deploy we cannot simply roll back from our side if a
device no longer talks to us. That is why releases to devices are slow, staged and boring on
purpose.

Cloud services (Gatehouse, Tally, the Lattice API, the dashboard and Siren) are not covered
here. They are deployed continuously from the main branch and versioned by date, for example
LatticeCloud 2026.10.3. See the last section for the few rules that still apply to them.

# 2. Versions

Firmware and GateOS use MAJOR.MINOR.PATCH version numbers.

- MAJOR follows the hardware generation: 4.x runs on LatticeNode 4; LatticeNode 5 will start
  at 5.0.
- MINOR is a release train: new features and fixes, released on the train schedule.
- PATCH is a hotfix outside the train, for example 4.2.1.

Every build is reproducible: the same commit and toolchain produce the same image hash. The
release captain checks this by building twice on two different machines.

# 3. The release train

A firmware release train leaves every six weeks, on a Tuesday. Code freeze is the Tuesday
before: after the freeze, only fixes for problems found during the freeze go in, and each
needs a second reviewer. Upcoming trains:

| Train | Release date | Code freeze | Planned content |
| --- | --- | --- | --- |
| 4.2.2 / GateOS 2.9.1 | 8 December 2026 | 1 December 2026 | Security fix SUP-104, minor fixes |
| 4.3 | 19 January 2027 | 12 January 2027 | Cold-weather retry pacing and battery estimate
    (SUP-102) |
| 4.4 | 2 March 2027 | 23 February 2027 | Mesh diagnostics for installers |
| 4.5 | 13 April 2027 | 6 April 2027 | To be planned |

If a train has nothing worth shipping, it is cancelled, not delayed. A feature that misses a
train waits for the next one.

# 4. Roles

- **Release captain.** Rotates per train among Dan Whitfield, Carol Mendes and Grace
  Kowalczyk. The captain runs the checklist, watches the rollout dashboards and has the
  authority to halt a rollout at any time without asking anyone.
- **Approvers.** Every release needs two approvals before signing: the release captain and a
  second engineer who did not write the main change. One of the two must be Dan or Carol,
  because they own the mesh code.
- **Support contact.** Erin Takahashi or whoever handles support that week receives the
  customer-facing release notes and briefs customers with special arrangements.

# 5. Release checklist

The captain works through this list and records the result in the release ticket.

1. Build the release candidate twice and compare the image hashes.
2. Run the automated test suite, including the radio simulation with 500 virtual nodes.
3. Flash the candidate to the lab fleet (forty LatticeNodes and three gateways in the
   Rotterdam office) and let it soak for 72 hours, including the nodes in the -28 C lab
   freezer.
4. Run the compatibility test against every GateOS version still in the field. This step was
   added after SUP-101: firmware 4.2 was tested against GateOS 2.9 only and broke on 2.8.
5. Compare battery drain estimates against the previous release. More than 5% worse blocks
   the release until explained.
6. Check that the update can be interrupted at every stage (power loss, radio loss) and that
   the node falls back to the previous image.
7. Write the changelog for engineering and short release notes for customers.
8. Get the two approvals in the release ticket.

# 6. Signing

Release images are signed with the Ed25519 firmware key held in the hardware security module
at Nimbus Grid. Signing requires two people: the release captain starts the signing job and
a second approver confirms it with their security key. Nobody can sign alone, including Dan.
Signed images are uploaded to the release console, which refuses unsigned or unreviewed
images.

GateOS images use a separate key in the same module, with the same two-person rule.

# 7. Staged rollout

Every release reaches the fleet in four stages. The release console selects devices at
random within each stage, but customers with special arrangements are placed by rule.

| Stage | Share of fleet | Minimum soak | Who is included |
| --- | --- | --- | --- |
| 1. Canary | 1% | 24 hours | Lab fleet, our own office, customers who opted in to early releases |
| 2. Early | 10% | 72 hours | Random sample across customers and GateOS versions |
| 3. Broad | 50% | 48 hours | Random sample |
| 4. Full | 100% | - | Everyone else, including customers who asked to be last |

The stage 2 soak was extended from 48 to 72 hours after SUP-101, because the 4.2 drop-outs
only became visible after several hours of power-save cycling. Counting the minimum soak
times, a normal release reaches the whole fleet no sooner than six days after it starts.

Bluewater Pharma Depot and any other customer with a validated environment are always in
stage 4 and receive the release notes two working days before their devices update.

Gateways install GateOS updates between 01:00 and 04:00 local time. Nodes install firmware
as soon as their gateway offers it, spread over several hours to avoid saturating the mesh.

## Halt criteria

The release captain pauses the rollout immediately, and investigates before resuming, when
any of the following is true for devices on the new release compared with devices not yet
updated:

- the share of nodes in "node silent" state is more than 0.5 percentage points higher;
- the estimated battery drain is more than 5% higher;
- crash or watchdog reboots exceed 3 per 1,000 nodes per day;
- any SEV1 incident is open, whatever its cause;
- a customer reports a problem that might be related and we cannot rule it out within an hour.

Pausing is cheap and never needs justification. Resuming after a halt needs the same two
approvals as the original release.

# 8. Rollback

Nodes keep the previous firmware in their second image slot. A rollback is a new release of
the previous image with a higher build number, pushed through the same stages but with soak
times cut to 6 hours each. Gateways can roll back to the previous GateOS image from the fleet
console without a new release.

# 9. Hotfixes

A hotfix is a PATCH release outside the train, for a problem that cannot wait: a security
issue, data loss, or devices dropping offline. Hotfixes go through the same four stages with
shortened soak times of 6, 12 and 12 hours, so they reach the whole fleet in about a day and a
half. The checklist still applies, except that the lab soak may be shortened to 12 hours with
Dan's approval. Firmware 4.2.1, the fix for SUP-101, was the last hotfix.

# 10. Communication

- Customer release notes go out two working days before stage 4 starts, by email and in the
  dashboard.
- Support gets a short briefing: what changed, what customers may notice, and known issues.
- The captain posts the start and end of each stage in the engineering channel.

# 11. Cloud releases

Cloud services are deployed continuously, but three rules from this process apply to them
too: no deploys to Siren on Fridays after 14:00 unless fixing an incident, database schema
changes need a second reviewer, and anything that changes what the dashboard shows to
customers gets a line in the customer release notes.

# 12. The release ticket

Every release has one ticket in the engineering tracker, created by the captain on the day of
code freeze. It is the record of the release and the first place anyone looks when a customer
asks what changed. The ticket contains:

- the version number, the commit hash and the image hashes from both builds;
- the list of changes, each linked to its pull request and, where relevant, its support
  ticket;
- the result of every checklist step, with links to test runs and lab soak dashboards;
- the two approvals, by name;
- the start and end time of each rollout stage, and any halt with its reason;
- the customer release notes as sent.

The ticket is closed when stage 4 has completed and the node-silent rate has been normal for
48 hours after it.

# 13. Notable releases

| Release | Date | What we learned |
| --- | --- | --- |
| 4.0 | June 2024 | First release with A/B image slots; rollbacks became possible. |
| 4.1 | May 2025 | A mesh routing change halted at stage 2 by the node-silent criterion;
    fixed in two days. |
| 4.2 | 15 September 2026 | Power-save poll interval broke gateways on GateOS 2.8 (SUP-101);
    led to the compatibility test and the longer stage 2 soak. |
| 4.2.1 | 6 October 2026 | Hotfix for SUP-101; the first hotfix under the shortened soak times. |

The common thread: every serious problem we have shipped was visible in the data within the
first stages. The process works when we respect the soak times, and the temptation to skip
them is strongest exactly when a release looks boring.
"""

INCIDENT = """
_Incident INC-2026-007. Severity: SEV1. Status: final, reviewed on 20 March 2026. Incident
lead: Carol Mendes. Reviewed by: Dan Whitfield. This report is blameless._

# Summary

On Saturday 14 March 2026, from 02:10 to 05:52 CET (3 hours 42 minutes), 64 LatticeGate G2
gateways at 11 customer sites could not connect to LatticeCloud. About 6,900 LatticeNode 4
sensors behind those gateways appeared offline in the dashboard. No readings were lost,
because the gateways buffered them, but every alarm from the affected sites was delayed, by up
to 3 hours 50 minutes.

The cause was an expired intermediate certificate. The gateways that were still using it were
the ones our January certificate rotation had silently skipped.

# Impact

- 11 customer sites belonging to 9 customers; 3 of the sites belong to Acme Cold Storage.
- About 6,900 sensors (30% of the fleet at the time) showed as offline.
- No data loss: 4.1 million buffered readings were replayed after reconnection.
- Alarms were delayed. The most serious case: a door left open in freezer hall 2 at Acme
  Cold Storage in Venlo raised an alarm at 02:12, which was delivered at 05:58. Acme's night
  shift found the door during a round at 04:30; the hall warmed to -14 C and no stock was
  lost.
- SLA credits of 18,300 EUR in total were issued to the 9 affected customers.

# Timeline (CET, 14 March 2026)

| Time | Event |
| --- | --- |
| 02:10 | Intermediate certificate "Lattice Gateway Intermediate 2025" expires. 64 gateways
    fail the TLS handshake with Gatehouse. |
| 02:14 | GatewayFleetDisconnect alert fires (34% of gateways missing heartbeats). Carol Mendes
    is paged. |
| 02:31 | Carol acknowledges the page (17 minutes; her phone was on silent). No secondary was
    configured to be paged automatically. |
| 02:45 | Incident channel opened, SEV1 declared. Gatehouse itself is healthy; the logs show
    certificate validation failures. |
| 03:05 | Root cause identified: the failing gateways present a chain with the expired 2025
    intermediate. |
| 03:12 | Status page updated. Dan Whitfield joins. |
| 03:40 | Decision: push newly issued device certificates through the LTE maintenance channel,
    which uses separate credentials. |
| 04:20 | New certificates pushed; gateways start reconnecting. |
| 05:10 | Tally ingest lag peaks at 38 minutes while gateways replay their buffers. |
| 05:52 | Last gateway reconnected. Ingest lag back to normal at 06:25. |
| 09:00 | Dana Okafor calls the three most affected customers, including Acme. |

# Root cause

Gateways authenticate to Gatehouse with a device certificate signed by a gateway intermediate
certificate, which is signed by our offline root. The 2025 intermediate had a validity of
twelve months. In January 2026 we issued a new intermediate and re-issued every device
certificate under it, delivered to the gateways by a configuration push.

The configuration push job had a version filter left over from an earlier migration: it
skipped gateways running GateOS 2.7 or earlier, and it reported success anyway. The 64 skipped
gateways kept their old certificate chain. Nothing monitored certificate expiry, and the
renewal reminder lived in the calendar of an engineer who left in 2025. When the 2025
intermediate expired, those 64 gateways could no longer authenticate.

# What went well

- Gateways buffered every reading; nothing was lost.
- The LTE maintenance channel, built for remote debugging, let us fix the gateways without
  site visits.
- Customer calls the next morning were appreciated, according to Erin's follow-ups.

# What went badly

- We had no alert for certificate expiry.
- A job that skipped a third of its targets reported success.
- The page took 17 minutes to acknowledge and nobody else was paged.
- The replay burst after reconnection overloaded Tally for almost an hour, delaying alarms
  for all customers, not only the affected ones.

# Follow-up actions

| Action | Owner | Due | Status |
| --- | --- | --- | --- |
| CertExpirySoon alert, 30 days before any certificate in the chain expires
    | Dan Whitfield | 27 Mar 2026 | Done |
| Page the secondary automatically after 15 minutes without acknowledgement
    | Dan Whitfield | 20 Mar 2026 | Done |
| GateOS 2.8: trust the root and fetch current intermediates automatically | Carol Mendes | 30
    Apr 2026 | Done |
| Upgrade every gateway on GateOS 2.7 or earlier | Dan Whitfield | 30 Apr 2026 | Done |
| Configuration push fails loudly when any target is skipped | Carol Mendes | 15 Apr 2026 | Done |
| scale-tally job for replay bursts, documented in the on-call runbook | Dan Whitfield | 3 Apr
    2026 | Done |
| Customer communication template for SEV1 incidents | Dana Okafor | 10 Apr 2026 | Done |
"""

ROADMAP: list[dict[str, Any]] = [
    {
        "title": "Engineering Roadmap 2027",
        "subtitle": "Dan Whitfield - draft for the 10 December 2026 board meeting\n"
        "Internal: engineering only",
    },
    {
        "title": "2026 in one slide",
        "bullets": [
            "Fleet grew from 19,000 to about 31,000 connected nodes",
            "March: INC-2026-007 gateway certificate outage; all follow-ups done",
            "Firmware 4.2 and hotfix 4.2.1 (SUP-101); GateOS 2.8 and 2.9",
            "LatticeNode 5 passed EVT (engineering validation) in October",
            "Team: Grace Kowalczyk joined as contractor in July",
        ],
    },
    {
        "title": "LatticeNode 5 - launch plan",
        "bullets": [
            "General availability: Tuesday 18 May 2027",
            "> DVT (design validation) builds: January 2027, 300 units",
            "> PVT (production validation) at Kade Electronics Assembly: March 2027",
            "> CE / RED radio certification complete: end of April 2027",
            "> First customer shipments the week of GA; pilot units to Kestrel Distribution",
            "Rated -40 C to +70 C; 7-year battery life at 5-minute reporting",
            "Dual radio: LatticeMesh plus LoRaWAN for sites with existing LoRa networks",
            "User-replaceable battery pack; larger buffer capacitor (fixes cold retries)",
        ],
        "notes": "GA date depends on the certification lab slot booked for 12 April 2027. "
        "If certification slips by more than three weeks, GA moves to after the summer.",
    },
    {
        "title": "2027 by quarter",
        "table": [
            ["Quarter", "Devices", "Cloud", "Company"],
            [
                "Q1",
                "Firmware 4.3 (cold-weather fix, 19 Jan); GateOS 3.0 with LTE-M failover",
                "Anomaly detection beta for LatticeCloud Pro",
                "Senior Backend Engineer hired",
            ],
            [
                "Q2",
                "LatticeNode 5 GA (18 May)",
                "Candidate: background exports up to 13 months (SUP-105), decided in January",
                "Customer Support Engineer hired",
            ],
            [
                "Q3",
                "LoRaWAN bridge in GateOS",
                "Anomaly detection generally available",
                "SOC 2 Type I audit window",
            ],
            [
                "Q4",
                "915 MHz variant: FCC certification for a US pilot",
                "Multi-site dashboards",
                "SOC 2 Type I report",
            ],
        ],
    },
    {
        "title": "Risks",
        "bullets": [
            "Ferrum FX-52 lead time is 26 weeks: the 2027 allocation must be confirmed now",
            "Certification lab slot (12 April) is a single point of failure for the GA date",
            "Bus factor: mesh code known by Dan and Carol only",
            "Grace's contract ends 30 June 2027, in the middle of the LatticeNode 5 ramp",
        ],
    },
]

# ======================================================================================
# finance/ (group:finance; payroll-notes.txt also denies user:bob)
# ======================================================================================

# (line, department, 2026 forecast, 2027 budget, owner, note)
BUDGET_LINES: list[tuple[str, str, int, int, str, str]] = [
    (
        "Hardware sales",
        "Revenue",
        1_510_000,
        1_850_000,
        "Erin Takahashi",
        "LatticeNode 4 and 5, LatticeGate G2",
    ),
    (
        "Subscriptions",
        "Revenue",
        740_000,
        1_150_000,
        "Erin Takahashi",
        "LatticeCloud Standard and Pro",
    ),
    ("Services", "Revenue", 60_000, 100_000, "Erin Takahashi", "Installation, commissioning"),
    (
        "Components",
        "Cost of goods",
        840_000,
        1_060_000,
        "Dan Whitfield",
        "Includes Ferrum FX-52 SoC",
    ),
    (
        "PCB assembly",
        "Cost of goods",
        160_000,
        185_000,
        "Dan Whitfield",
        "Kade Electronics Assembly",
    ),
    ("Logistics and packaging", "Cost of goods", 41_000, 52_000, "Alice Brandt", ""),
    (
        "Warranty and replacements",
        "Cost of goods",
        38_000,
        46_000,
        "Dan Whitfield",
        "Includes free batteries for cold sites",
    ),
    ("Cloud hosting", "Cost of goods", 39_000, 42_000, "Dan Whitfield", "Nimbus Grid"),
    ("Installation subcontractors", "Cost of goods", 44_000, 60_000, "Erin Takahashi", ""),
    (
        "Engineering salaries",
        "Engineering",
        236_000,
        412_000,
        "Dan Whitfield",
        "Incl. employer costs; 2 new hires (April, July)",
    ),
    (
        "Contractors",
        "Engineering",
        48_000,
        48_000,
        "Dan Whitfield",
        "Brightforge contract until 30 June 2027",
    ),
    (
        "Prototypes and lab",
        "Engineering",
        64_000,
        85_000,
        "Dan Whitfield",
        "LatticeNode 5 DVT/PVT builds",
    ),
    ("Certification", "Engineering", 12_000, 38_000, "Dan Whitfield", "CE/RED and FCC"),
    ("Software and tools", "Engineering", 13_000, 16_000, "Dan Whitfield", ""),
    (
        "Sales salaries",
        "Sales and Marketing",
        97_000,
        116_000,
        "Erin Takahashi",
        "Incl. SDR from September",
    ),
    ("Sales commission", "Sales and Marketing", 41_000, 64_000, "Erin Takahashi", ""),
    (
        "Marketing",
        "Sales and Marketing",
        71_000,
        184_000,
        "Erin Takahashi",
        "See Marketing sheet; LogiMAT 2027 is the largest item",
    ),
    ("Sales travel", "Sales and Marketing", 19_000, 26_000, "Erin Takahashi", ""),
    (
        "G&A salaries",
        "General and Administrative",
        318_000,
        328_000,
        "Alice Brandt",
        "CEO, finance, people ops; intern until Feb",
    ),
    (
        "Office rent",
        "General and Administrative",
        66_000,
        66_000,
        "Alice Brandt",
        "Kadeweg 14, Rotterdam",
    ),
    ("Legal", "General and Administrative", 21_000, 28_000, "Dana Okafor", ""),
    ("Accounting and audit", "General and Administrative", 18_000, 22_000, "Alice Brandt", ""),
    ("Insurance", "General and Administrative", 13_000, 14_000, "Alice Brandt", ""),
    (
        "Recruiting",
        "General and Administrative",
        6_000,
        24_000,
        "Frank Dubois",
        "Havenwerk fee for the backend role",
    ),
    ("Payroll and HR tools", "General and Administrative", 8_000, 9_000, "Frank Dubois", ""),
    ("Other G&A", "General and Administrative", 10_000, 12_000, "Alice Brandt", ""),
]

MARKETING_2027: list[tuple[str, int, str, str]] = [
    (
        "LogiMAT 2027 trade show (Stuttgart, March)",
        92_000,
        "Q1",
        "Booth, travel, demo kits; LatticeNode 5 preview",
    ),
    ("Digital campaigns", 48_000, "Q1-Q4", "Search and LinkedIn, Germany and Benelux"),
    ("Content and case studies", 24_000, "Q2-Q3", "Three customer case studies, video"),
    ("Agency retainer", 20_000, "Q1-Q4", "Brand and website agency"),
]


def budget_sheets() -> list[tuple[str, list[list[Any]]]]:
    lines: list[list[Any]] = [
        ["Line", "Department", "2026 forecast (EUR)", "2027 budget (EUR)", "Owner", "Notes"]
    ]
    lines += [list(row) for row in BUDGET_LINES]
    order = [
        "Revenue",
        "Cost of goods",
        "Engineering",
        "Sales and Marketing",
        "General and Administrative",
    ]
    totals = {
        d: [
            sum(r[2] for r in BUDGET_LINES if r[1] == d),
            sum(r[3] for r in BUDGET_LINES if r[1] == d),
        ]
        for d in order
    }
    summary: list[list[Any]] = [["Item", "2026 forecast (EUR)", "2027 budget (EUR)"]]
    summary += [[d, *totals[d]] for d in order]
    opex = [sum(totals[d][i] for d in order[2:]) for i in (0, 1)]
    gross = [totals["Revenue"][i] - totals["Cost of goods"][i] for i in (0, 1)]
    result = [gross[i] - opex[i] for i in (0, 1)]
    summary += [
        ["Gross profit", *gross],
        ["Total operating expenses", *opex],
        [
            "Total costs (cost of goods + operating expenses)",
            *[totals["Cost of goods"][i] + opex[i] for i in (0, 1)],
        ],
        ["Operating result", *result],
        ["Capital expenditure (LatticeNode 5 tooling)", 94_000, 140_000],
        ["Inventory build", 265_000, 250_000],
        ["Headcount at year end (incl. contractor)", 8, 11],
    ]
    marketing: list[list[Any]] = [["Marketing item 2027", "Budget (EUR)", "When", "Notes"]]
    marketing += [list(r) for r in MARKETING_2027]
    marketing.append(["Total marketing budget 2027", sum(r[1] for r in MARKETING_2027), "", ""])
    assumptions: list[list[Any]] = [
        ["Assumption", "Value"],
        ["Status", "Draft v3, 20 November 2026, for board approval on 10 December 2026"],
        ["Prepared by", "Alice Brandt, Finance Lead"],
        ["Nodes shipped in 2027", "14,500 (LatticeNode 4 and 5 combined)"],
        ["Connected nodes at end of 2027", "45,000"],
        ["Average subscription price", "2.75 EUR per node per month"],
        ["Salary increases", "Merit pool as agreed in the salary review; see payroll owner"],
        [
            "Hires",
            "Senior Backend Engineer (April), Customer Support Engineer (July), SDR (September)",
        ],
        ["Currency", "All amounts in EUR, excluding VAT"],
    ]
    return [
        ("Summary", summary),
        ("Lines", lines),
        ("Marketing", marketing),
        ("Assumptions", assumptions),
    ]


VENDORS: list[list[Any]] = [
    [
        "Vendor",
        "Service",
        "Owner",
        "Start",
        "End",
        "Annual value (EUR)",
        "Notice period",
        "Auto-renew",
        "Notes",
    ],
    [
        "Kade Electronics Assembly B.V.",
        "PCB assembly and box build (LatticeNode, LatticeGate)",
        "Dan Whitfield",
        "2025-01-01",
        "2027-12-31",
        185_000,
        "6 months",
        "No",
        "Notice or renegotiation by 30 June 2027. 11.20 EUR per LatticeNode 4 board.",
    ],
    [
        "Ferrum Semiconductors",
        "FX-52 system-on-chip supply",
        "Dan Whitfield",
        "2026-01-01",
        "2026-12-31",
        410_000,
        "90 days",
        "Yes, 1 year",
        "Lead time 26 weeks. 2027 allocation of 40,000 units to be confirmed.",
    ],
    [
        "Nimbus Grid GmbH",
        "Cloud hosting, Frankfurt and Amsterdam; HSM",
        "Dan Whitfield",
        "2026-04-01",
        "2027-03-31",
        42_000,
        "60 days",
        "Yes, 1 year",
        "HSM included in price.",
    ],
    [
        "Brightforge Contracting",
        "Contract cloud engineer (Grace Kowalczyk)",
        "Dan Whitfield",
        "2026-07-01",
        "2027-06-30",
        96_000,
        "30 days",
        "No",
        "Day rate 640 EUR, 150 days per year. Conversion decision by 31 March 2027.",
    ],
    [
        "Loonwerk Payroll Services",
        "Payroll processing",
        "Alice Brandt",
        "2024-01-01",
        "Open-ended",
        4_800,
        "3 months",
        "Yes",
        "",
    ],
    [
        "Ledgerly",
        "Expense management tool",
        "Alice Brandt",
        "2025-06-01",
        "2027-05-31",
        2_400,
        "30 days",
        "Yes, 2 years",
        "",
    ],
    [
        "PageRelay",
        "On-call paging",
        "Dan Whitfield",
        "2026-02-01",
        "2027-01-31",
        1_900,
        "30 days",
        "Yes, 1 year",
        "",
    ],
    [
        "Keyfort",
        "Password manager",
        "Dan Whitfield",
        "2026-03-01",
        "2027-02-28",
        1_100,
        "30 days",
        "Yes, 1 year",
        "",
    ],
    [
        "Van Dijk & Moerman Advocaten",
        "Legal counsel (framework agreement)",
        "Dana Okafor",
        "2025-03-01",
        "Open-ended",
        28_000,
        "None",
        "n/a",
        "Annual cap; hourly rate 245 EUR.",
    ],
    [
        "Havenwerk Recruitment",
        "Recruiting: Senior Backend Engineer only",
        "Frank Dubois",
        "2026-11-20",
        "2027-06-30",
        0,
        "30 days",
        "No",
        "Success fee 18% of first-year base salary; no retainer.",
    ],
    [
        "Maashaven Properties B.V.",
        "Office lease, Kadeweg 14, Rotterdam",
        "Alice Brandt",
        "2024-09-01",
        "2029-08-31",
        66_000,
        "12 months",
        "No",
        "Indexed yearly on 1 September.",
    ],
]

Q3_REPORT = """
_Prepared by Alice Brandt, Finance Lead, for the board and leadership. 14 October 2026.
Unaudited management accounts. All amounts in EUR._

# Highlights

- Revenue of 612,400 EUR, up 18.0% on Q2 2026 (518,900 EUR), our best quarter so far.
- Gross margin of 47.8%, down from 49.1% in Q2 because of higher component prices and the
  free replacement batteries sent to cold-storage sites.
- EBITDA of 20,400 EUR, our first positive quarter (Q2 2026: -2,600 EUR).
- Cash at 30 September 2026: 3,180,000 EUR. Average net burn of 137,000 EUR per month in the
  quarter, including the LatticeNode 5 inventory build, gives a runway of about 23 months.

# Profit and loss

| Item | Q2 2026 | Q3 2026 |
| --- | --- | --- |
| Hardware revenue | 331,600 | 386,900 |
| Subscription revenue | 174,800 | 210,500 |
| Services revenue | 12,500 | 15,000 |
| Total revenue | 518,900 | 612,400 |
| Cost of goods | 264,300 | 319,700 |
| Gross profit | 254,600 | 292,700 |
| Engineering | 91,300 | 96,800 |
| Sales and Marketing | 52,100 | 58,600 |
| General and Administrative | 113,800 | 116,900 |
| EBITDA | -2,600 | 20,400 |

# Key figures

| Metric | Value |
| --- | --- |
| Nodes shipped in Q3 | 3,950 |
| Gateways shipped in Q3 | 31 |
| Subscribed nodes at 30 September | 29,100 |
| Customers at 30 September | 41 |
| Net revenue retention (trailing 12 months) | 112% |
| Days sales outstanding | 41 days |
| Largest customer share of revenue (Acme Cold Storage, year to date) | 14% |

# Cash flow

Net cash outflow in Q3 was 411,000 EUR, or 137,000 EUR per month: EBITDA of +20,400 EUR,
less 265,000 EUR of components bought ahead of the LatticeNode 5 ramp (the Ferrum FX-52 lead
time has grown to 26 weeks), 94,000 EUR for LatticeNode 5 tooling and 72,400 EUR of working
capital as receivables grew. Without the inventory and tooling, the business was close to
cash neutral in the quarter.

# Comments

Revenue growth came mostly from expansions at existing customers. Subscription revenue grew
20% on Q2 as customers moved to LatticeCloud Pro for its longer history and API access.

The firmware 4.2 connectivity problem (SUP-101) cost no revenue but delayed two hardware
deliveries into October. The March outage credits were booked in Q1 and do not affect this
quarter.

# Risks

- Customer concentration: the Acme Cold Storage renewal (contract ends 31 December 2026) is
  the single largest item in the Q4 forecast.
- Component costs: a further 5% rise in FX-52 prices would cost about 1.5 points of gross
  margin.
- Inventory: the LatticeNode 5 build ties up cash until the product ships.

# Outlook for Q4 2026

We expect revenue of 640,000 to 690,000 EUR and a full-year 2026 revenue of about 2.31
million EUR. The 2027 budget will be presented to the board on 10 December 2026.
"""

# ======================================================================================
# sales/ (group:sales)
# ======================================================================================

PRICING: list[tuple[str, list[list[Any]]]] = [
    (
        "Price list 2027",
        [
            ["SKU", "Product", "Unit", "List price 2026 (EUR)", "List price 2027 (EUR)", "Notes"],
            [
                "LN4-STD",
                "LatticeNode 4 sensor node",
                "per unit",
                159.0,
                149.0,
                "Price cut to clear stock ahead of LatticeNode 5",
            ],
            [
                "LN5-STD",
                "LatticeNode 5 sensor node",
                "per unit",
                None,
                189.0,
                "Pre-orders accepted; delivery dates per engineering plan only",
            ],
            ["LG2", "LatticeGate G2 gateway", "per unit", 690.0, 690.0, "Up to 250 nodes each"],
            [
                "LC-STD",
                "LatticeCloud Standard",
                "per node per month",
                2.40,
                2.40,
                "13 months of history",
            ],
            [
                "LC-PRO",
                "LatticeCloud Pro",
                "per node per month",
                3.40,
                3.60,
                "24 months of history, public API, anomaly alerts",
            ],
            [
                "INST",
                "Installation and commissioning",
                "per hour",
                90.0,
                95.0,
                "Plus travel at cost",
            ],
            ["BAT-2", "Replacement battery pack (2x AA lithium)", "per unit", 9.50, 9.90, ""],
        ],
    ),
    (
        "Volume discounts",
        [
            ["Nodes in the order or contract", "Discount on nodes and subscription"],
            ["1 - 499", 0.0],
            ["500 - 1,999", 0.06],
            ["2,000 - 4,999", 0.10],
            ["5,000 and more", 0.14],
            ["3-year term, fully prepaid (added to the tier)", 0.05],
        ],
    ),
    (
        "Discount rules",
        [
            ["Rule", "Detail"],
            [
                "Validity",
                "This price list applies to quotes issued from 1 January to 31 December 2027.",
            ],
            ["Head of Sales", "May add up to 2 percentage points on top of the volume tier."],
            [
                "CEO approval",
                "Anything beyond tier plus 2 points, free hardware, or non-standard "
                "terms needs approval from Dana Okafor.",
            ],
            ["Hard cap", "Total discount never exceeds 18%."],
            ["Gateways", "Gateways are never discounted below 590 EUR."],
            ["Quotes", "Quotes are valid for 30 days and must use the quote template."],
        ],
    ),
]

PIPELINE_DEALS: list[tuple[str, int, int, str, float, str]] = [
    ("Acme Cold Storage (renewal, 3 years)", 3_200, 365_000, "Commit", 0.9, "30 Nov 2026"),
    (
        "Kestrel Distribution",
        5_500,
        610_000,
        "Pilot (200 nodes live in Zwolle since 5 Oct)",
        0.3,
        "Feb 2027",
    ),
    ("Bluewater Pharma Depot (second site)", 1_200, 160_000, "Negotiation", 0.6, "Dec 2026"),
    ("Rijnmond Cold Hub", 1_800, 235_000, "Proposal", 0.4, "Jan 2027"),
    ("Hanse Frischlogistik (Hamburg)", 3_000, 470_000, "Qualification", 0.1, "Q2 2027"),
]


def pipeline_slides() -> list[dict[str, Any]]:
    total = sum(d[2] for d in PIPELINE_DEALS)
    weighted = round(sum(d[2] * d[4] for d in PIPELINE_DEALS))
    table: list[list[Any]] = [
        ["Deal", "Nodes", "Value (EUR)", "Stage", "Probability", "Expected close"]
    ]
    table += [[d[0], f"{d[1]:,}", f"{d[2]:,}", d[3], f"{d[4]:.0%}", d[5]] for d in PIPELINE_DEALS]
    return [
        {
            "title": "Pipeline Review Q4 2026",
            "subtitle": "Erin Takahashi - 9 November 2026\nSales team only",
        },
        {
            "title": "Summary",
            "bullets": [
                f"Open pipeline: {total:,} EUR across {len(PIPELINE_DEALS)} deals",
                f"Weighted pipeline: {weighted:,} EUR",
                "Q4 2026 target for new bookings: 420,000 EUR",
                "Bookings so far in Q4: 138,000 EUR (two expansions)",
                "Win rate over the last four quarters: 31%",
            ],
        },
        {
            "title": "Top deals",
            "table": table,
            "notes": "Kestrel is the largest opportunity but still in pilot; the pilot review "
            "with their operations director is on 8 December 2026.",
        },
        {
            "title": "Risks",
            "bullets": [
                "Acme: price pressure and battery drain in the Venlo freezer halls (SUP-102)",
                "Kestrel: wants LatticeNode 5 for the rollout; pilot runs on LatticeNode 4",
                "Bluewater: validation paperwork for the pharma site takes 6-8 weeks",
                "Frostline Sensors is in three of the five deals",
            ],
        },
        {
            "title": "Asks",
            "bullets": [
                "Dana: approve the Acme package (12%, 6 free gateways, batteries) by 13 November",
                "Dan: one engineer on site at Kestrel Zwolle for the pilot review on 8 December",
                "Alice: margin check on the Acme package before 12 November",
            ],
        },
    ]


# ======================================================================================
# people/ (group:people-ops)
# ======================================================================================

PERFORMANCE = """
_Owner: Frank Dubois, People Operations. Confidential: People Operations and managers during
the review cycle. Version for the 2026 cycle._

## Why we do reviews

Reviews exist so that everyone knows, at least once a year, how their work is seen, what to
focus on next and how their pay will change. Nothing in a review should be a surprise: if a
manager has a concern, it belongs in a one-to-one when it happens, not in November.

## Cycle and timeline

We run one full review per year in November and a lighter check-in in May. The May check-in
has no rating and no pay change; it is a conversation about goals.

| Step | Date (2026 cycle) | Who |
| --- | --- | --- |
| Self-review submitted in the HR tool | Friday 6 November | Employee |
| Peer feedback (two peers, chosen with the manager) | Friday 13 November | Peers |
| Manager review and proposed rating | Friday 20 November | Manager |
| Calibration meeting | Friday 27 November | Dana Okafor, Dan Whitfield, Frank Dubois, plus
    Alice Brandt and Erin Takahashi for their teams |
| Review conversations | By Friday 11 December | Manager and employee |
| Pay changes take effect | 1 January 2027 | People Operations and Finance |

## Rating scale

We use a five-point scale. The words matter more than the numbers.

| Rating | Name | What it means |
| --- | --- | --- |
| 1 | Not meeting expectations | Clear gaps in results or behaviour; an improvement plan follows. |
| 2 | Partially meeting expectations | Some expectations met, others not yet; common for people
    new in a role. |
| 3 | Fully meeting expectations | Solid, reliable work at the level of the role. Most people,
    most years. |
| 4 | Exceeding expectations | Consistently delivers beyond the role and lifts the people
    around them. |
| 5 | Exceptional | Rare: work that changed the company's results this year. |

There are no quotas. In a team of eight, a calibration that ends with everyone at 4 or 5
means the bar is wrong, and the calibration meeting will say so.

## What managers assess

1. Results: what the person delivered against the goals agreed in the last cycle.
2. How: collaboration, written communication, reliability, and care for customers.
3. Growth: what they learned and what they should learn next.

Write two or three concrete examples for each. "Great team player" is not an example; "ran
the SUP-101 customer updates for two weeks while also on call" is.

## Pay

Merit increases come from a merit pool set by Finance in the salary review. As a guide:
rating 3 receives about the pool average, rating 4 about one and a half times the average,
rating 5 about twice the average, and ratings 1 and 2 receive no merit increase. Calibration
may deviate from the guide, with a reason recorded. Managers never discuss numbers with an
employee before calibration is finished.

## Who is not in the cycle

- Interns receive written feedback at the end of their internship instead of a rating.
- Contractors are not reviewed; their hiring manager gives feedback to the contracting firm.
- Employees who joined after 1 September take part in the next cycle, with a check-in now.

## Improvement plans

A rating of 1 is followed by a written improvement plan of at most eight weeks with clear,
measurable goals and weekly check-ins. Frank Dubois joins the first and last meeting.

## Confidentiality

Reviews are visible to the employee, their manager and People Operations only. They are kept
in the HR tool for three years after the employee leaves, and never in shared folders or chat.
"""


# ======================================================================================
# The drive: path -> bytes
# ======================================================================================

DOCUMENTS: dict[str, Callable[[], bytes]] = {
    "handbook/onboarding-checklist.docx": lambda: docx_bytes(
        "Onboarding Checklist", "Frank Dubois", when("2026-11-02"), ONBOARDING
    ),
    "handbook/org-chart.pptx": lambda: pptx_bytes(
        "Northwind Lattice Org Chart", "Frank Dubois", when("2026-11-02"), ORG_CHART
    ),
    "engineering/release-process.docx": lambda: docx_bytes(
        "Firmware and GateOS Release Process",
        "Dan Whitfield",
        when("2026-10-14"),
        RELEASE_PROCESS,
    ),
    "engineering/incident-2026-03-sensor-outage.pdf": lambda: pdf_bytes(
        "Incident Report INC-2026-007: Sensor outage after gateway certificate expiry",
        "Carol Mendes",
        when("2026-03-20"),
        "Northwind Lattice - engineering internal",
        INCIDENT,
    ),
    "engineering/roadmap-2027.pptx": lambda: pptx_bytes(
        "Engineering Roadmap 2027", "Dan Whitfield", when("2026-11-18"), ROADMAP
    ),
    "finance/budget-2027.xlsx": lambda: xlsx_bytes(
        "Budget 2027", "Alice Brandt", when("2026-11-20"), budget_sheets()
    ),
    "finance/vendor-contracts.xlsx": lambda: xlsx_bytes(
        "Vendor Contracts", "Alice Brandt", when("2026-11-20"), [("Contracts", VENDORS)]
    ),
    "finance/q3-2026-report.pdf": lambda: pdf_bytes(
        "Q3 2026 Financial Report",
        "Alice Brandt",
        when("2026-10-14"),
        "Northwind Lattice - finance confidential",
        Q3_REPORT,
    ),
    "sales/pricing-2027.xlsx": lambda: xlsx_bytes(
        "Price List 2027", "Erin Takahashi", when("2026-11-09"), PRICING
    ),
    "sales/pipeline-review.pptx": lambda: pptx_bytes(
        "Pipeline Review Q4 2026", "Erin Takahashi", when("2026-11-09"), pipeline_slides()
    ),
    "people/performance-review-guidelines.docx": lambda: docx_bytes(
        "Performance Review Guidelines", "Frank Dubois", when("2026-10-01"), PERFORMANCE
    ),
    # Deliberately unreadable: random bytes under a .docx name, and an empty file.
    "misc/corrupt-export.docx": lambda: random.Random(20260314).randbytes(6144),
    "misc/empty.txt": lambda: b"",
}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale: list[str] = []
    for rel, build in DOCUMENTS.items():
        path = DRIVE / rel
        data = build()
        if path.exists() and path.read_bytes() == data:
            continue
        stale.append(rel)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    verb = "out of date" if check else "written"
    print(f"{len(DOCUMENTS)} generated files, {len(stale)} {verb}")
    for rel in stale:
        print(f"  {rel}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

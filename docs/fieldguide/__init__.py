"""The site's build: every scenario page is proved by the capture this build recorded.

How to write a scenario page
============================

1. Write the example first: `examples/SNAKE_SLUG.py` (see `examples/lab/__init__.py`),
   name every packet in its claims(), and record it: `nox -s examples -- --update SLUG`
   (the first recording commits its shape, `examples/shapes/SLUG.txt`). Its TITLE becomes
   the page title, its PHASE the navigation group, the first paragraph of its docstring
   the one-line cause in the home page's index, and its second paragraph the "Why" of
   the short answer (a third, how the lab decides a race, is read with the code).
2. Copy `docs/scenarios/closed-port.md` to `docs/scenarios/SLUG.md` and replace the prose.
   Do not write an H1: the title comes from TITLE. Do not touch mkdocs.yml: the page
   appears in the navigation and in the home page's index by itself.
3. Keep every placeholder below, each on a line of its own, in this order; the build
   fails if one is missing or unknown:

       {{ short_answer }}     what you see, who sends the RST, why, what each app got, the fix
       {{ trace }}            tcpdump's text, each line anchored by number (#packet-N)
                              and by name (#client-syn), and the claims the build checked
       {{ diagram }}          Mermaid sequenceDiagram generated from the packets
       {{ outcomes }}         every socket call of each application and its result
       {{ counters }}         nstat deltas per host
       {{ example }}          the example file, included (never pasted), and how to run it
       {{ provenance }}       kernel, tcpdump, recorded-at, pcap link and SHA-256

   Optional, anywhere:

       {{ packet NAME }}       inline: the packet its claim named, linked to its trace line,
                               with sender, receiver and `[R.] seq 0, ack 1, win 0`
                               (a group claim's name, e.g. handshake, links its first packet)
       {{ trace beside SLUG }} {{ diagram beside SLUG }}: this page's and another
                               scenario's trace side by side in content tabs
       {{ trace SLUG }}        another scenario's trace alone (anchors #SLUG-NAME)

   A packet is named in the example, never numbered in the prose: `{{ packet 3 }}` and an
   unknown name fail the build, naming the page and the line. Never type a number from a
   capture (seq, port, time, errno) into the prose either: ports and ISNs change every
   run. Say it in words, or use {{ packet NAME }}.
4. Python code blocks in pages are linted, formatted and run by the tests
   (pytest-examples). A block that cannot run alone (it needs the lab's hosts) gets
   `test="skip"` after the language: ```python test="skip"; `#>` lines check output.
5. Sections every page has, under these headings: "The trace", "The exchange",
   "What each application saw", "Which counters moved", "Why Linux does this",
   "Spot it in production", "Fix or avoid", "The example", "Provenance"; "You may have
   seen" is added at the end. "Fix or avoid" begins with one line, `**In short:** what to
   change` (a summary of the section, nothing it does not say): the short answer ends with
   it, linked to the section (#fix-or-avoid).

Every scenario page also gets a "Kernels" section (#kernels, kernels.py): how the scenario
went on the other kernels `nox -s matrix` recorded, explained from kernel_notes.yml.

Other pages may use {{ scenario_index }} (home), {{ symptom_index }}, {{ kernel_matrix }},
{{ client_matrix }} and {{ client_programs }} (clients.md: what the real client programs printed,
and their files),
{{ tcpdump_line SLUG NAME }} (one recorded line with its fields) and {{ trace SLUG }}.
Prose about the real client programs' rows or lines goes between {{ if_programs }} and
{{ end_if_programs }} (a paragraph, or part of a sentence): a build made without the programs
(`--no-programs`) leaves it out, so that no page refers to rows it does not show.

The modules: recordings.py loads and checks every recording (lab.artifact's schema);
render.py turns one into Markdown and HTML (pure, unit-tested); placeholders.py is the
one registry of placeholders and expands a page; symptoms.py is the symptom index;
programs.py the client programs' matrix and each scenario's row of them;
chinese.py gives Chinese readers each scenario's title and summary (chinese.yml: a new
scenario needs its entry) and glibc's own Chinese error texts;
mermaid.py serves Mermaid from the site; wireshark.py has Wireshark's own dissectors
(one sharkd) read every capture, for each page's section "In Wireshark" (#wireshark,
inserted before "The exchange"); hooks.py wires them to MkDocs' events.
"""

# The build's one decision on the real client programs (programs.py): their lines are shown,
# and a missing, stale or failed client-session recording fails the build, unless the build
# was asked for without them (`python -m fieldguide.build --no-programs`, which gives mkdocs
# FIELDGUIDE_PROGRAMS=0; hooks.py reads it, once)
PROGRAMS_ENV = "FIELDGUIDE_PROGRAMS"
NO_PROGRAMS = "--no-programs"

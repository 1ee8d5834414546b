"""The dashboard's entry point (what ``infdebug dashboard`` hands to Streamlit): the page
set, one module each under ``views/``."""

from __future__ import annotations

import streamlit as st

from infdebug.dashboard import ui

st.set_page_config(page_title="infdebug", page_icon=":material/troubleshoot:", layout="wide")

PAGES = [
    st.Page("views/overview.py", title="Fleet overview", icon=":material/dashboard:", default=True),
    st.Page(
        "views/replica.py",
        title="Replica drill-down",
        icon=":material/biotech:",
        url_path="replica",
    ),
    st.Page(
        "views/finding.py",
        title="Finding detail",
        icon=":material/troubleshoot:",
        url_path="finding",
    ),
    st.Page(
        "views/requests.py",
        title="Request explorer",
        icon=":material/receipt_long:",
        url_path="requests",
    ),
    st.Page(
        "views/workload.py", title="Workload", icon=":material/show_chart:", url_path="workload"
    ),
    st.Page(
        "views/report.py", title="Incident report", icon=":material/description:", url_path="report"
    ),
]
st.navigation(PAGES).run()
ui.run_marker()  # the page's run is over: what the browser test waits for

"""The dashboard's entry point (what ``infdebug dashboard`` hands to Streamlit): the page
set, one module each under ``pages/``."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="infdebug", page_icon="🔎", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Fleet overview", icon="🛰️", default=True),
    st.Page("pages/replica.py", title="Replica drill-down", icon="🔬", url_path="replica"),
    st.Page("pages/finding.py", title="Finding detail", icon="🧩", url_path="finding"),
    st.Page("pages/requests.py", title="Request explorer", icon="📜", url_path="requests"),
    st.Page("pages/workload.py", title="Workload", icon="📈", url_path="workload"),
    st.Page("pages/report.py", title="Incident report", icon="📝", url_path="report"),
]
st.navigation(PAGES).run()

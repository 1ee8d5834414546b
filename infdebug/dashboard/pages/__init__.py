"""The dashboard's pages: each a Streamlit script that ``app.py`` lists."""

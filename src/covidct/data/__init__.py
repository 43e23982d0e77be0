"""covidct.data"""
